service {
  name = "mesh-gateway"
  kind = "mesh-gateway"
  port = 8444
  tagged_addresses {
    lan { address = "127.0.0.1", port = 8444 }
    wan { address = "127.0.0.1", port = 8444 }
  }
}
