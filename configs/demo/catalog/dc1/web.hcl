# web in dc1, with its sidecar registered inline (Consul's sidecar_service form). Two upstreams reach the
# same api in dc2 two ways: port 10000 takes the mode proxy-defaults sets (local: dc1's gateway, then
# dc2's), port 10001 overrides it at the upstream (remote: straight to dc2's gateway).
service {
  name = "web"
  port = 8080
  connect {
    sidecar_service {
      port = 21000
      proxy {
        upstreams = [
          {
            destination_name = "api"
            datacenter = "dc2"
            local_bind_port = 10000
          },
          {
            destination_name = "api"
            datacenter = "dc2"
            local_bind_port = 10001
            mesh_gateway { mode = "remote" }
          },
        ]
      }
    }
  }
}
