# Two instances of api in dc1, each a sidecar proxy registration (Consul's connect-proxy kind).
services = [
  {
    name = "api-sidecar-proxy"
    id = "api-1-sidecar-proxy"
    kind = "connect-proxy"
    port = 9001
    proxy {
      destination_service_name = "api"
    }
  },
  {
    name = "api-sidecar-proxy"
    id = "api-2-sidecar-proxy"
    kind = "connect-proxy"
    port = 9002
    proxy {
      destination_service_name = "api"
    }
  },
]
