service {
  name = "mesh-gateway"
  kind = "mesh-gateway"
  port = 8443
  tagged_addresses {
    wan { address = "127.0.0.1", port = 8443 }
  }
}
