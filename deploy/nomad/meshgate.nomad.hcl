# meshgate as a Nomad system job: one mesh gateway per client node in the `gateway` node pool (or with
# meta.meshgate_gateway = "true"), Docker driver, host network, beside the node's Consul agent.
#
# No capability is needed. Docker reads the seccomp file from the client's disk: copy
# deploy/seccomp/meshgate.json to /etc/meshgate/seccomp.json on every gateway node (the runtime's
# default profile blocks io_uring; the gateway then exits 1 naming the profile).
# Checked by `cargo xtask deploy-check` (parsed with python-hcl2, fields compared with the image's
# contract and the Kubernetes manifests).
job "meshgate-gateway" {
  type        = "system"
  datacenters = ["dc1"]

  constraint {
    attribute = "${meta.meshgate_gateway}"
    value     = "true"
  }

  update {
    max_parallel     = 1
    min_healthy_time = "10s"
    healthy_deadline = "2m"
  }

  group "gateway" {
    network {
      mode = "host"
      port "mesh" {
        static = 8443
      }
      port "admin" {
        static = 19000
      }
    }

    service {
      name     = "meshgate-gateway-admin"
      provider = "consul"
      # The admin endpoint binds the node's loopback (the agent checking it runs on the node).
      address  = "127.0.0.1"
      port     = "admin"
      check {
        type     = "http"
        path     = "/ready"
        interval = "5s"
        timeout  = "2s"
      }
    }

    task "meshgate" {
      driver = "docker"
      user   = "10001"

      # SIGTERM drains (drain_grace_ms + drain_timeout_secs); the kill timeout must exceed both.
      kill_signal  = "SIGTERM"
      kill_timeout = "40s"

      config {
        image        = "meshgate:latest"
        network_mode = "host"
        args         = ["gateway", "--register", "--config", "/local/gateway.toml"]
        readonly_rootfs = true
        security_opt = ["seccomp=/etc/meshgate/seccomp.json", "no-new-privileges"]
        ulimit {
          memlock = "-1"
          nofile  = "262144"
        }
        # The Docker healthcheck is the image's (meshgate health); Nomad's own check is the service's.
      }

      template {
        destination = "local/gateway.toml"
        data        = <<-EOT
          [gateway]
          name = "mesh-gateway"
          datacenter = "{{ env "node.datacenter" }}"
          listen = ["0.0.0.0:8443"]
          admin = "127.0.0.1:19000"
          workers = 2
          drain_grace_ms = 2000
          drain_timeout_secs = 30

          [consul]
          address = "127.0.0.1:8500"

          [catalog]
          plugin = "consul-catalog"
        EOT
      }

      # workers = 2: two cores reserved for the task.
      resources {
        cores  = 2
        memory = 256
      }
    }
  }
}
