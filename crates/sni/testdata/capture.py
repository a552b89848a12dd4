#!/usr/bin/env python3
"""Capture real ClientHellos from openssl s_client and curl into testdata/*.bin.

Run from this folder: `python3 capture.py`. Each capture listens on 127.0.0.1, lets the client connect,
keeps the bytes the client sends before it waits for the server, and stops the client.
"""
import socket, subprocess, time

CAPTURES = {
    "openssl_sni_alpn.bin": ["openssl", "s_client", "-connect", "127.0.0.1:{port}", "-servername",
                             "api.default.dc2.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul",
                             "-alpn", "h2,http/1.1"],
    "openssl_sni.bin": ["openssl", "s_client", "-connect", "127.0.0.1:{port}", "-servername", "web.example"],
    "openssl_no_sni.bin": ["openssl", "s_client", "-connect", "127.0.0.1:{port}", "-noservername"],
    "openssl_tls12.bin": ["openssl", "s_client", "-tls1_2", "-connect", "127.0.0.1:{port}",
                          "-servername", "legacy.example"],
    "curl_h2.bin": ["curl", "-sk", "--http2", "--max-time", "2", "--resolve",
                    "Mixed.Case.Example:{port}:127.0.0.1", "https://Mixed.Case.Example:{port}/"],
    "curl_http11.bin": ["curl", "-sk", "--http1.1", "--max-time", "2", "--resolve",
                        "db.default.dc1.internal.td.consul:{port}:127.0.0.1",
                        "https://db.default.dc1.internal.td.consul:{port}/"],
}

for name, argv in CAPTURES.items():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    proc = subprocess.Popen([a.format(port=port) for a in argv], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    conn, _ = srv.accept()
    conn.settimeout(0.5)
    data = b""
    while True:
        try:
            chunk = conn.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        data += chunk
    conn.close()
    srv.close()
    proc.kill()
    proc.wait()
    open(name, "wb").write(data)
    print(name, len(data))
