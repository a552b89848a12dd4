# Who may call api. The api sidecar's default policy is deny (see api-sidecar.toml), so only web gets in.
Kind = "service-intentions"
Name = "api"
Sources = [
  {
    Name   = "web"
    Action = "allow"
  },
]
