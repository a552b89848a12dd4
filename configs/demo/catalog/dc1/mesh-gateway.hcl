service {
  name = "mesh-gateway"
  kind = "mesh-gateway"
  port = 8443
  tagged_addresses {
    lan { address = "127.0.0.1", port = 8443 }
    wan { address = "127.0.0.1", port = 8443 }
  }
}
