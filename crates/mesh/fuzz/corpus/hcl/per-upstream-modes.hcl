service {
  name = "web-sidecar-proxy"
  kind = "connect-proxy"
  port = 8181
  proxy {
    destination_service_name = "web"
    upstreams = [
      {
        destination_name = "api"
        local_bind_port = 10000
        mesh_gateway {
          mode = "remote"
        }
      },
      {
        destination_name = "db"
        local_bind_port = 10001
        mesh_gateway {
          mode = "local"
        }
      },
      {
        destination_name = "logging"
        local_bind_port = 10002
        mesh_gateway {
          mode = "none"
        }
      },
    ]
  }
}
