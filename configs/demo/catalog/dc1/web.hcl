# web, with its sidecar registered inline (Consul's sidecar_service form).
service {
  name = "web"
  port = 8080
  connect {
    sidecar_service {
      port = 9003
      proxy {
        upstreams = [
          {
            destination_name = "api"
            datacenter = "dc2"
            local_bind_port = 10000
          },
        ]
      }
    }
  }
}
