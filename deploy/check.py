#!/usr/bin/env python3
"""Validates deploy/ without a cluster (`cargo xtask deploy-check` runs it in a venv with the pinned
kubernetes-validate and python-hcl2 from PyPI).

Kubernetes: every manifest under deploy/kubernetes/ against the API schemas of KUBERNETES_VERSION
(strict: unknown fields are errors). Nomad: the job parses as HCL2. Then both are held to the image's
contract (docs/container.md, docs/operations.md): host network, the shipped seccomp profile, uid 10001,
a read-only root, probes/checks on /ready at the admin address, a stop timeout longer than the drain,
CPUs reserved equal to `workers`, and a gateway config that `meshgate check` accepts (when the binary
is given as the first argument).
"""
import glob
import os
import re
import subprocess
import sys
import tempfile

import hcl2
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.30.0"
ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
ADMIN = "127.0.0.1:19000"
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


def drain_seconds(toml_text):
    grace = re.search(r"^drain_grace_ms\s*=\s*(\d+)", toml_text, re.M)
    timeout = re.search(r"^drain_timeout_secs\s*=\s*(\d+)", toml_text, re.M)
    return (int(grace.group(1)) if grace else 1000) / 1000 + (int(timeout.group(1)) if timeout else 30)


def workers(toml_text):
    m = re.search(r"^workers\s*=\s*(\d+)", toml_text, re.M)
    return int(m.group(1)) if m else None


def meshgate_check(binary, name, toml_text):
    if not binary:
        return
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "gateway.toml")
        with open(path, "w") as f:
            f.write(toml_text)
        r = subprocess.run([binary, "check", path], capture_output=True, text=True)
        check(r.returncode == 0, f"{name}: meshgate check: {r.stdout}{r.stderr}")


def kubernetes(binary):
    docs = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "deploy/kubernetes/*.yaml"))):
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if not doc:
                    continue
                try:
                    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
                except kubernetes_validate.ValidationError as e:
                    failures.append(f"{os.path.relpath(path, ROOT)}: {doc['kind']}: {e.message} at {list(e.path)}")
                docs[(doc["kind"], doc["metadata"]["name"])] = doc
        print(f"kubernetes-validate {KUBERNETES_VERSION} --strict: {os.path.relpath(path, ROOT)}")
    ds = docs[("DaemonSet", "meshgate-gateway")]
    config = docs[("ConfigMap", "meshgate-gateway")]["data"]["gateway.toml"]
    pod = ds["spec"]["template"]["spec"]
    c = pod["containers"][0]
    check(pod.get("hostNetwork") is True, "DaemonSet: hostNetwork")
    sec = pod["securityContext"]
    check(sec.get("runAsUser") == 10001 and sec.get("runAsNonRoot") is True, "DaemonSet: uid 10001, non-root")
    check(sec.get("seccompProfile") == {"type": "Localhost", "localhostProfile": "profiles/meshgate.json"},
          "DaemonSet: the shipped seccomp profile as a Localhost profile")
    check(c["securityContext"].get("readOnlyRootFilesystem") is True, "DaemonSet: read-only root")
    for probe in ("startupProbe", "readinessProbe"):
        g = c[probe]["httpGet"]
        check(f"{g.get('host')}:{g.get('port')}" == ADMIN and g.get("path") == "/ready",
              f"DaemonSet: {probe} on {ADMIN}/ready")
    check(pod["terminationGracePeriodSeconds"] > drain_seconds(config),
          "DaemonSet: terminationGracePeriodSeconds must exceed drain_grace_ms + drain_timeout_secs")
    req = c["resources"]["requests"]["cpu"]
    check(str(req) == str(workers(config)) and c["resources"]["limits"]["cpu"] == req,
          f"DaemonSet: cpu request {req} = limit = workers ({workers(config)})")
    check(f'admin = "{ADMIN}"' in config, "ConfigMap: admin on the node's loopback")
    with open(os.path.join(ROOT, "deploy/seccomp/meshgate.json")) as f:
        check("io_uring_setup" in f.read(), "deploy/seccomp/meshgate.json allows io_uring")
    meshgate_check(binary, "ConfigMap meshgate-gateway", config)


def nomad(binary):
    path = os.path.join(ROOT, "deploy/nomad/meshgate.nomad.hcl")
    with open(path) as f:
        spec = hcl2.load(f)
    print(f"python-hcl2: {os.path.relpath(path, ROOT)}")

    def one(block):  # python-hcl2 gives every block as a list
        return block[0] if isinstance(block, list) else block

    def unq(v):  # python-hcl2 8 keeps the quotes of string literals
        return v.strip('"') if isinstance(v, str) else v

    job = one(spec["job"])
    (name, job), = job.items()
    check(unq(job["type"]) == "system", "Nomad: a system job (one gateway per node)")
    group = one(job["group"])
    (_, group), = group.items()
    check(unq(one(group["network"])["mode"]) == "host", "Nomad: host network")
    svc = one(group["service"])
    chk = one(svc["check"])
    check(unq(svc.get("address")) == ADMIN.split(":")[0] and unq(chk["path"]) == "/ready",
          "Nomad: the service check probes /ready on the node's loopback")
    task = one(group["task"])
    (_, task), = task.items()
    cfg = one(task["config"])
    check(unq(task["driver"]) == "docker" and unq(cfg["network_mode"]) == "host", "Nomad: docker, host network")
    check(unq(task["user"]) == "10001", "Nomad: uid 10001")
    check(cfg.get("readonly_rootfs") is True, "Nomad: read-only root")
    check(any("seccomp=" in unq(s) for s in cfg["security_opt"]), "Nomad: the seccomp profile")
    check(unq(one(cfg["ulimit"]).get("memlock")) == "-1", "Nomad: memlock ulimit")
    data = unq(one(task["template"])["data"])
    # The heredoc's text, with Nomad's template expressions replaced by a value.
    data = re.sub(r"^<<-?EOT\n|EOT$", "", data.strip())
    data = re.sub(r"\{\{[^}]*\}\}", "dc1", data)
    data = "\n".join(line.strip() for line in data.splitlines())
    kill = int(re.match(r"(\d+)s", unq(task["kill_timeout"])).group(1))
    check(unq(task["kill_signal"]) == "SIGTERM" and kill > drain_seconds(data),
          "Nomad: SIGTERM, kill_timeout longer than the drain")
    check(one(task["resources"])["cores"] == workers(data), "Nomad: cores = workers")
    meshgate_check(binary, "Nomad template gateway.toml", data)


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else None
    kubernetes(binary)
    nomad(binary)
    if failures:
        print("deploy/ check failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        sys.exit(1)
    print("deploy/: valid")


if __name__ == "__main__":
    main()
