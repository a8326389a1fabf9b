"""turn-client.py — the checks of scripts/check-deploy-turn.sh written in
Python: the rendered files, the compose service, Synapse's turnServer answer,
and a small TURN client (RFC 5766/8656 Allocate, CreatePermission, Refresh
with long-term credentials, over UDP, TCP and TLS) that speaks to coturn
exactly as a WebRTC client does, so that every answer can be asserted
(401, 403, 442, 486) rather than read from turnutils_uclient's log.

Usage:   python3 scripts/turn-client.py SUBCOMMAND ENV_FILE [ARGS…]
Needs:   Python 3 with PyYAML (Synapse's virtualenv has it); deploy_checks.py beside it.
"""

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import re
import socket
import ssl
import struct
import sys
import time

from deploy_checks import Checks, load_env, registration_mac  # beside this file

MAGIC = 0x2112A442
ALLOCATE, REFRESH, CREATE_PERMISSION = 0x003, 0x004, 0x008
SEND_INDICATION, DATA_INDICATION = 0x016, 0x017
A_USERNAME, A_MI, A_ERROR, A_LIFETIME, A_XOR_PEER = 0x0006, 0x0008, 0x0009, 0x000D, 0x0012
A_REALM, A_NONCE, A_XOR_RELAYED, A_FAMILY, A_TRANSPORT = 0x0014, 0x0015, 0x0016, 0x0017, 0x0019
A_DATA, A_XOR_MAPPED, A_SOFTWARE, A_FINGERPRINT = 0x0013, 0x0020, 0x8022, 0x8028
UDP, TCP = 17, 6


C = Checks("check-deploy-turn")
ok, fail, check = C.ok, C.fail, C.check


# ---- the TURN client -----------------------------------------------------------


def attr(kind, value):
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


def xor_address(ip, port, txid):
    addr = ipaddress.ip_address(ip)
    xport = port ^ (MAGIC >> 16)
    if addr.version == 4:
        return struct.pack("!BBH", 0, 1, xport) + (int(addr) ^ MAGIC).to_bytes(4, "big")
    mask = struct.pack("!I", MAGIC) + txid
    return struct.pack("!BBH", 0, 2, xport) + bytes(a ^ b for a, b in zip(addr.packed, mask))


def parse_xor_address(value, txid):
    family, xport = value[1], struct.unpack("!H", value[2:4])[0]
    port = xport ^ (MAGIC >> 16)
    if family == 1:
        return str(ipaddress.IPv4Address(int.from_bytes(value[4:8], "big") ^ MAGIC)), port
    mask = struct.pack("!I", MAGIC) + txid
    return str(ipaddress.IPv6Address(bytes(a ^ b for a, b in zip(value[4:20], mask)))), port


class Answer:
    def __init__(self, data, txid):
        kind, length, magic = struct.unpack("!HHI", data[:8])
        check(magic == MAGIC and data[8:20] == txid, "coturn answered with another transaction")
        self.cls = ((kind >> 7) & 2) | ((kind >> 4) & 1)  # 2 success, 3 error
        self.attrs = {}
        pos = 20
        while pos < 20 + length:
            t, n = struct.unpack("!HH", data[pos:pos + 4])
            self.attrs.setdefault(t, data[pos + 4:pos + 4 + n])
            pos += 4 + n + (-n % 4)
        self.txid = txid
        self.code = 0
        if A_ERROR in self.attrs:
            v = self.attrs[A_ERROR]
            self.code = (v[2] & 7) * 100 + v[3]
            self.reason = v[4:].decode(errors="replace")

    @property
    def success(self):
        return self.cls == 2

    def relayed(self):
        return parse_xor_address(self.attrs[A_XOR_RELAYED], self.txid)

    def __repr__(self):
        return "success" if self.success else f"{self.code} {getattr(self, 'reason', '')!r}"


class Turn:
    """One client 5-tuple (one allocation) to coturn over udp, tcp or tls."""

    def __init__(self, transport, host, port, cafile=None, server_hostname=None):
        self.transport = transport
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if transport == "udp":
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
            self.sock.connect((host, port))
        else:
            self.sock = socket.create_connection((host, port), timeout=5)
            if transport == "tls":
                ctx = ssl.create_default_context(cafile=cafile)
                self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname or host)
        self.sock.settimeout(5)
        self.username = self.key = self.realm = self.nonce = None
        self.buf = b""

    def close(self):
        self.sock.close()

    def _recv(self):
        if self.transport == "udp":
            return self.sock.recv(65535)
        while True:
            if len(self.buf) >= 20:
                n = 20 + struct.unpack("!H", self.buf[2:4])[0]
                if len(self.buf) >= n:
                    data, self.buf = self.buf[:n], self.buf[n:]
                    return data
            chunk = self.sock.recv(65535)
            check(chunk, f"coturn closed the {self.transport} connection")
            self.buf += chunk

    def request(self, method, attrs, auth=True):
        txid = os.urandom(12)
        body = b"".join(attr(t, v) for t, v in attrs)
        if auth and self.key:
            body += attr(A_USERNAME, self.username.encode()) + attr(A_REALM, self.realm) + attr(A_NONCE, self.nonce)
            header = struct.pack("!HHI", method, len(body) + 24, MAGIC) + txid
            body += attr(A_MI, hmac.new(self.key, header + body, hashlib.sha1).digest())
        data = struct.pack("!HHI", method, len(body), MAGIC) + txid + body
        for attempt in range(3):  # UDP: resend on loss (none is expected on 127.0.0.1)
            self.sock.send(data)
            try:
                return Answer(self._recv(), txid)
            except socket.timeout:
                if self.transport != "udp" or attempt == 2:
                    raise
        raise AssertionError

    def allocate(self, username, password, family=4, transport=UDP):
        """The client's two Allocates: unauthenticated (401 with realm and
        nonce), then with the credential. Returns the second answer."""
        attrs = [(A_TRANSPORT, bytes([transport, 0, 0, 0]))]
        if family == 6:
            attrs.append((A_FAMILY, bytes([2, 0, 0, 0])))
        first = self.request(ALLOCATE, attrs, auth=False)
        check(not first.success and first.code == 401 and A_REALM in first.attrs and A_NONCE in first.attrs,
              f"an Allocate without a credential got {first!r}, not 401 with a realm and a nonce (an open relay?)")
        self.realm, self.nonce = first.attrs[A_REALM], first.attrs[A_NONCE]
        self.username = username
        self.key = hashlib.md5(f"{username}:{self.realm.decode()}:{password}".encode()).digest()
        self.first = first
        return self.request(ALLOCATE, attrs)

    def permit(self, ip, port=9):
        """CreatePermission for one peer address (nothing is sent to it)."""
        txid = os.urandom(12)  # an IPv6 peer address is XORed with the transaction id
        body = attr(A_XOR_PEER, xor_address(ip, port, txid))
        body += attr(A_USERNAME, self.username.encode()) + attr(A_REALM, self.realm) + attr(A_NONCE, self.nonce)
        header = struct.pack("!HHI", CREATE_PERMISSION, len(body) + 24, MAGIC) + txid
        body += attr(A_MI, hmac.new(self.key, header + body, hashlib.sha1).digest())
        self.sock.send(struct.pack("!HHI", CREATE_PERMISSION, len(body), MAGIC) + txid + body)
        return Answer(self._recv(), txid)

    def relay(self, ip, port, payload):
        """A Send indication to the peer; the peer's answer, from a Data indication."""
        txid = os.urandom(12)
        body = attr(A_XOR_PEER, xor_address(ip, port, txid)) + attr(A_DATA, payload)
        self.sock.send(struct.pack("!HHI", SEND_INDICATION, len(body), MAGIC) + txid + body)
        while True:
            data = self._recv()
            kind = struct.unpack("!H", data[:2])[0]
            if kind == DATA_INDICATION:
                got = Answer(data, data[8:20])
                return parse_xor_address(got.attrs[A_XOR_PEER], data[8:20]), got.attrs.get(A_DATA)

    def release(self):
        self.request(REFRESH, [(A_LIFETIME, struct.pack("!I", 0))])


def rest_credential(secret, user_id, expiry):
    """The TURN REST API's credential, as Synapse makes it."""
    username = f"{int(expiry)}:{user_id}"
    password = base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()
    return username, password


# ---- the rendered files ----------------------------------------------------------

# What the relay must never reach, written down here independently of the
# template: the ranges issue 21 lists and the rest of IANA's special-purpose
# registries (RFC 6890) that are not globally reachable, with the IPv6 forms
# that carry an IPv4 address.
MUST_DENY = [
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "::/96", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64",
    "2001::/32", "2001:db8::/32", "2002::/16", "3fff::/20", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
]
# Public addresses: the relay must reach these (permission only: nothing is sent).
MUST_ALLOW = ["1.1.1.1", "8.8.8.8", "91.198.174.192", "2a00:1450:4001::1", "2606:4700::1111"]


def conf_lines(path):
    return [l.strip() for l in open(path, encoding="utf8") if l.strip() and not l.lstrip().startswith("#")]


def denied_ranges(lines):
    out = []
    for line in lines:
        if line.startswith("denied-peer-ip="):
            value = line.split("=", 1)[1]
            lo, _, hi = value.partition("-")
            out.append((ipaddress.ip_address(lo), ipaddress.ip_address(hi or lo), value))
    return out


# coturn refuses the zero addresses itself (ioa_addr_is_zero), whatever its configuration.
BUILT_IN = [(ipaddress.ip_address("0.0.0.0"),) * 2, (ipaddress.ip_address("::"),) * 2]


def covered(net, ranges):
    """Whether the ranges (with coturn's own refusals) cover every address of net."""
    start, end = int(net.network_address), int(net.broadcast_address)
    spans = sorted((int(lo), int(hi)) for lo, hi, *_ in ranges + BUILT_IN if lo.version == net.version)
    for lo, hi in spans:
        if lo <= start <= hi:
            start = hi + 1
            if start > end:
                return True
    return False


def coturn_reads_as_written(lo, hi):
    """Whether coturn 4.6 reads the range lo-hi as the addresses from lo to hi.
    It does not when lo is all zeros (no lower bound, and every address of the
    other family matches), nor for an IPv6 range that is not a "box": coturn
    compares IPv6 addresses byte by byte, which agrees with the numeric order
    only when lo and hi share their first bytes, differ in one, and then lo
    has only 0x00 and hi only 0xff."""
    if int(lo) == 0 or lo.version != hi.version or lo > hi:
        return False
    if lo.version == 4:
        return True
    a, b = lo.packed, hi.packed
    k = next((i for i in range(16) if a[i] != b[i]), 16)
    return all(x == 0 for x in a[k + 1:]) and all(x == 0xFF for x in b[k + 1:])


def rendered_dir(E):
    out = E["RENDERED_DIR"]
    return out if os.path.isabs(out) else os.path.join(os.environ["REPO"], "deploy", out)


def expected_host(E):
    return E["TURN_HOST"] or E["MATRIX_HOST"]


def expected_uris(E):
    host = expected_host(E)
    return [f"turn:{host}:{E['TURN_PORT']}?transport=udp", f"turn:{host}:{E['TURN_PORT']}?transport=tcp",
            f"turns:{host}:{E['TURNS_PORT']}?transport=tcp"]


def cmd_rendered():
    """The rendered coturn config and homeserver.yaml agree with .env and with what issue 21 asks."""
    import yaml
    E = load_env(sys.argv[2])
    out = rendered_dir(E)
    path = os.path.join(out, "coturn", "turnserver.conf")
    lines = conf_lines(path)
    keys = {}
    for line in lines:
        k, _, v = line.partition("=")
        keys.setdefault(k, []).append(v)
    secrets = E["TURN_SHARED_SECRET"].split(",")
    host = expected_host(E)
    want = {
        "use-auth-secret": [""], "static-auth-secret": secrets, "realm": [E["TURN_REALM"] or host],
        "listening-port": [E["TURN_PORT"]], "tls-listening-port": [E["TURNS_PORT"]],
        "cert": [E["TLS_CERTIFICATE"]], "pkey": [E["TLS_CERTIFICATE_KEY"]],
        "min-port": [E["TURN_MIN_PORT"]], "max-port": [E["TURN_MAX_PORT"]],
        "no-cli": [""], "no-multicast-peers": [""], "no-tcp-relay": [""], "no-dtls": [""],
        "log-file": ["stdout"], "user-quota": ["12"],
        "total-quota": [str(int(E["TURN_MAX_PORT"]) - int(E["TURN_MIN_PORT"]) + 1)],
    }
    for k, v in want.items():
        check(keys.get(k) == v, f"{path}: {k} is {keys.get(k)!r}, expected {v!r}")
    for k in ("no-auth", "lt-cred-mech", "user", "allow-loopback-peers", "allowed-peer-ip", "cli-password",
              "web-admin", "listening-ip", "relay-ip", "server-relay", "mobility"):
        check(k not in keys, f"{path}: {k} is set (an open relay, a second way in, or a hole in the denied ranges)")
    ranges = denied_ranges(lines)
    for lo, hi, text in ranges:
        check(coturn_reads_as_written(lo, hi), f"{path}: coturn 4.6 would not read denied-peer-ip={text} as written")
    for net in MUST_DENY:
        check(covered(ipaddress.ip_network(net), ranges), f"{path}: the denied-peer-ip ranges leave {net} open")
    for ip in MUST_ALLOW:
        a = ipaddress.ip_address(ip)
        check(not any(lo <= a <= hi for lo, hi, _ in ranges if lo.version == a.version),
              f"{path}: the denied-peer-ip ranges deny the public {ip}")
    hs = yaml.safe_load(open(os.path.join(out, "synapse", "homeserver.yaml"), encoding="utf8"))
    check(hs.get("turn_uris") == expected_uris(E), f"homeserver.yaml: turn_uris {hs.get('turn_uris')}")
    check(hs.get("turn_shared_secret") == secrets[0], "homeserver.yaml: turn_shared_secret is not the first TURN_SHARED_SECRET")
    check(hs.get("turn_user_lifetime") == E["TURN_USER_LIFETIME"], "homeserver.yaml: turn_user_lifetime")
    check(hs.get("turn_allow_guests") is False, "homeserver.yaml: turn_allow_guests is not false")
    ok(f"rendered coturn/turnserver.conf: use-auth-secret with {len(secrets)} static-auth-secret (TURN_SHARED_SECRET), "
       f"realm {want['realm'][0]}, ports {E['TURN_PORT']} and {E['TURNS_PORT']} (TLS with TLS_CERTIFICATE), relay "
       f"{E['TURN_MIN_PORT']}-{E['TURN_MAX_PORT']}, no open relay, no TCP relay, no CLI, log to stdout; "
       f"{len(ranges)} denied-peer-ip ranges, each read by coturn 4.6 as written, cover all {len(MUST_DENY)} "
       "private, loopback, link-local, CGNAT, multicast and reserved ranges (IPv4, IPv6 and IPv4-in-IPv6; 0.0.0.0 "
       "and :: coturn refuses itself) and no public address; homeserver.yaml: "
       f"turn_uris {hs['turn_uris']}, the first secret, lifetime {hs['turn_user_lifetime']}, no guests")


def cmd_compose():
    import yaml
    E = load_env(sys.argv[2])
    services = yaml.safe_load(open(sys.argv[3], encoding="utf8"))["services"]
    check("coturn" in services, "docker-compose config has no coturn service")
    s = services["coturn"]
    check(s.get("network_mode") == "host" and not s.get("ports") and not s.get("networks"),
          f"coturn: network_mode {s.get('network_mode')!r}, ports {s.get('ports')}: not the host's network")
    check(s.get("image") == E["COTURN_LOCAL_IMAGE"], f"coturn: image {s.get('image')}")
    build = s["build"]
    context = build["context"]
    check(os.path.samefile(context, os.path.join(os.environ["REPO"], "deploy", "coturn")), f"coturn: build context {context}")
    base = build.get("args", {}).get("COTURN_BASE_IMAGE")
    check(base == E["COTURN_BASE_IMAGE"], f"coturn: built from {base}")
    release = dict(l.rstrip("\n").split("=", 1) for l in open("/etc/os-release") if "=" in l).get("VERSION_CODENAME", "")
    check(re.fullmatch(rf"debian:({release}|{release}-slim|{release}-\d+(-slim)?)", base or "") is not None,
          f"coturn is built from {base}, not from Debian {release}, whose coturn package this check runs")
    dockerfile = open(os.path.join(context, build.get("dockerfile") or "Dockerfile"), encoding="utf8").read()
    check("FROM ${COTURN_BASE_IMAGE}" in dockerfile and re.search(r"apt-get install .*\bcoturn\b", dockerfile)
          and 'ENTRYPOINT ["turnserver", "-c", "/etc/coturn/turnserver.conf"]' in dockerfile,
          "deploy/coturn/Dockerfile: not Debian's coturn package running /etc/coturn/turnserver.conf")
    mounts = {}
    for v in s.get("volumes", []):
        if isinstance(v, dict):
            mounts[v["target"]] = (v.get("source"), v.get("read_only", False))
        else:
            parts = v.split(":")
            mounts[parts[1]] = (parts[0], parts[2:] == ["ro"])
    conf = os.path.join(rendered_dir(E), "coturn")
    check(mounts.get("/etc/coturn") == (conf, True), f"coturn: /etc/coturn is {mounts.get('/etc/coturn')}, not {conf} read-only")
    check(os.path.isfile(os.path.join(conf, "turnserver.conf")), f"{conf}/turnserver.conf was not rendered")
    check(mounts.get(E["TLS_DIR"]) == (E["TLS_DIR"], True), f"coturn: TLS_DIR is not mounted read-only at {E['TLS_DIR']}")
    check(s.get("cap_drop") == ["ALL"] and "no-new-privileges:true" in (s.get("security_opt") or []),
          "coturn: capabilities are not all dropped, or no-new-privileges is off")
    ok(f"docker-compose config: coturn on the host's network (no published ports, no proxy per relay port), built "
       f"from {base} with Debian's coturn package (this machine's Debian, whose coturn runs here), its rendered "
       f"config at /etc/coturn and TLS_DIR read-only, every capability dropped")


# ---- Synapse's answer ----------------------------------------------------------------


def call(method, url, body=None, token=None):
    """(status, the answer's JSON, {} when empty)."""
    status, _, data = C.call(method, url, body, token)
    return status, json.loads(data or b"{}")


def cmd_synapse():
    """A person registered and signed in asks Synapse for TURN credentials."""
    E = load_env(sys.argv[2])
    base, out = sys.argv[3], sys.argv[4]
    secret = E["TURN_SHARED_SECRET"].split(",")[0]
    status, got = call("GET", base + "/_synapse/admin/v1/register")
    check(status == 200, f"register nonce: {status} {got}")
    user, password = f"caller{int(time.time())}", "turn-check-password"
    status, got = call("POST", base + "/_synapse/admin/v1/register", {
        "nonce": got["nonce"], "username": user, "password": password, "admin": False,
        "mac": registration_mac(E["SYNAPSE_REGISTRATION_SECRET"], got["nonce"], user, password, False),
        "inhibit_login": True})
    check(status == 200, f"registration: {status} {got}")
    user_id = got["user_id"]
    status, got = call("POST", base + "/_matrix/client/v3/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password})
    check(status == 200, f"sign-in: {status} {got}")
    token = got["access_token"]
    status, got = call("GET", base + "/_matrix/client/v3/voip/turnServer")
    check(status == 401, f"turnServer without a session: {status} {got}")
    before = time.time()
    status, turn = call("GET", base + "/_matrix/client/v3/voip/turnServer", token=token)
    check(status == 200, f"turnServer: {status} {turn}")
    lifetime = {"s": 1, "m": 60, "h": 3600, "d": 86400}[E["TURN_USER_LIFETIME"][-1]] * int(E["TURN_USER_LIFETIME"][:-1])
    check(turn.get("uris") == expected_uris(E), f"turnServer uris {turn.get('uris')}, expected {expected_uris(E)}")
    m = re.fullmatch(r"(\d+):(@.+)", turn.get("username", ""))
    check(m and m.group(2) == user_id, f"turnServer username {turn.get('username')!r} is not <expiry>:{user_id}")
    expiry = int(m.group(1))
    check(before + lifetime - 5 <= expiry <= time.time() + lifetime + 5,
          f"the username's expiry {expiry} is not now + TURN_USER_LIFETIME ({lifetime} s)")
    check(turn.get("ttl") == lifetime, f"turnServer ttl {turn.get('ttl')}, expected {lifetime}")
    check(turn.get("password") == rest_credential(secret, user_id, expiry)[1],
          "turnServer password is not base64(HMAC-SHA1(TURN_SHARED_SECRET, username))")
    json.dump({"user_id": user_id, **turn}, open(out, "w"))
    ok(f"Synapse with the rendered TURN settings: {user_id} registered and signed in; GET "
       f"/_matrix/client/v3/voip/turnServer answers the 3 rendered URIs, username <now+{lifetime}>:{user_id}, "
       f"password = base64(HMAC-SHA1(TURN_SHARED_SECRET, username)), ttl {lifetime} (401 without a session)")


# ---- coturn ----------------------------------------------------------------------------


def turn_endpoints(E, creds):
    """(transport, host, port) for each URI Synapse handed out."""
    out = []
    for uri in creds["uris"]:
        m = re.fullmatch(r"(turns?):([^:?]+):(\d+)\?transport=(udp|tcp)", uri)
        check(m, f"cannot read {uri}")
        scheme, host, port, transport = m.groups()
        out.append(("tls" if scheme == "turns" else transport, host, int(port)))
    return out


def connect(E, transport, host, port):
    return Turn(transport, host, port, cafile=E["TLS_CERTIFICATE"], server_hostname=host)


def probe_addresses(conf):
    """Addresses to ask permissions for: both ends of every rendered range,
    and one inside each range issue 21 lists."""
    ranges = denied_ranges(conf_lines(conf))
    addrs = []
    for lo, hi, _ in ranges:
        addrs += [lo, hi]
    for net in MUST_DENY:
        n = ipaddress.ip_network(net)
        addrs.append(n.network_address + min(n.num_addresses - 1, 1))
    addrs += [ipaddress.ip_address(a) for a in (
        "169.254.169.254", "172.30.66.10", "192.168.1.1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
        "::ffff:172.30.66.10", "::127.0.0.1", "64:ff9b::a00:1", "2002:a00:1::1", "2002:7f00:1::1",
        "fd00::2", "fe80::1", "ff02::1")]
    seen, out = set(), []
    for a in addrs:
        if a not in seen:
            seen.add(a)
            out.append(a)
    return out


def cmd_coturn():
    """coturn as rendered: Synapse's credential, wrong and expired ones, denied peers, quotas."""
    E = load_env(sys.argv[2])
    creds = json.load(open(sys.argv[3]))
    conf = sys.argv[4]
    secret = E["TURN_SHARED_SECRET"].split(",")[0]
    user_id, username, password = creds["user_id"], creds["username"], creds["password"]
    endpoints = turn_endpoints(E, creds)
    realm = (E["TURN_REALM"] or expected_host(E)).encode()
    lo, hi = int(E["TURN_MIN_PORT"]), int(E["TURN_MAX_PORT"])

    # Synapse's credential, on every URI it handed out.
    for transport, host, port in endpoints:
        t = connect(E, transport, host, port)
        got = t.allocate(username, password)
        check(got.success, f"Allocate over {transport} with Synapse's credential: {got!r}")
        ip, rport = got.relayed()
        check(lo <= rport <= hi, f"relayed port {rport} outside TURN_MIN_PORT-TURN_MAX_PORT")
        check(t.first.attrs[A_REALM] == realm, f"coturn's realm is {t.first.attrs[A_REALM]!r}, not {realm!r}")
        check(A_SOFTWARE not in got.attrs and A_SOFTWARE not in t.first.attrs, "coturn names its software")
        t.release()
        t.close()
    ok(f"coturn (the rendered turnserver.conf) allocates a relay with Synapse's credential over each URI Synapse "
       f"hands out ({', '.join(tr for tr, _, _ in endpoints)}; TLS with the certificate of TLS_CERTIFICATE checked "
       f"for {endpoints[0][1]}), relay ports in {lo}-{hi}, realm {realm.decode()}, no software name; "
       "without a credential: 401")

    transport, host, port = endpoints[0]
    expired = rest_credential(secret, user_id, time.time() - 60)
    for what, (u, p) in {
        "a wrong password": (username, base64.b64encode(os.urandom(20)).decode()),
        "Synapse's password with another expiry": (f"{int(username.split(':')[0]) + 1}:{user_id}", password),
        "another user id with Synapse's password": (f"{username.split(':')[0]}:@someone:{user_id.split(':', 1)[1]}", password),
        "a credential of another secret": rest_credential("not-" + secret, user_id, time.time() + 3600),
        "a credential that expired a minute ago (HMAC of the right secret)": expired,
    }.items():
        t = connect(E, transport, host, port)
        got = t.allocate(u, p)
        check(not got.success and got.code == 401, f"Allocate with {what}: {got!r}, expected 401")
        t.close()
    ok("coturn refuses (401) a wrong password, a changed expiry or user id, another secret's credential, and "
       "an expired credential made with the right secret")

    # TCP relays (RFC 6062) are off.
    t = connect(E, "tcp", host, port)
    got = t.allocate(username, password, transport=TCP)
    check(not got.success and got.code == 442, f"Allocate of a TCP relay: {got!r}, expected 442")
    t.close()

    # Denied peers: every probe address refused (403), public ones allowed.
    # IPv6 peers need an IPv6 relay (coturn's relay-ip ::1), where ::1 exists.
    families = (4, 6) if os.environ.get("TURN_CHECK_IPV6", "1") == "1" else (4,)
    probes = [a for a in probe_addresses(conf) if a.version in families]
    allowed = [a for a in MUST_ALLOW if ipaddress.ip_address(a).version in families]
    allocations = {}
    for family in families:
        t = connect(E, "udp", host, port)
        got = t.allocate(username, password, family=family)
        check(got.success, f"Allocate of an IPv{family} relay: {got!r}")
        allocations[family] = t
    refused = 0
    for a in probes:
        got = allocations[a.version].permit(str(a))
        check(not got.success and got.code == 403, f"CreatePermission for {a}: {got!r}, expected 403 Forbidden")
        refused += 1
    for a in allowed:
        v = ipaddress.ip_address(a).version
        got = allocations[v].permit(a)
        check(got.success, f"CreatePermission for the public {a}: {got!r}")
    for t in allocations.values():
        t.release()
        t.close()
    ok(f"coturn refuses (403) a relay to each of {refused} addresses: both ends of every rendered denied range and one "
       "in each range issue 21 lists (127.0.0.1, 10.0.0.1, 169.254.169.254, the compose network's 172.30.66.10, "
       "::1, fd00::2, fe80::1, ::ffff:127.0.0.1, 64:ff9b::a00:1, 2002:a00:1::1, …), over "
       f"{' and '.join(f'IPv{f}' for f in families)} relays{'' if 6 in families else ' (no ::1 here: IPv6 not checked)'}; "
       f"public addresses are allowed ({', '.join(allowed)}); a TCP relay is refused (442)")

    # user-quota: 12 allocations of one person, whichever credential; the 13th
    # refused. Another person than the one above, whose released UDP
    # allocations coturn may still count until their sessions time out.
    person = "@quota-check:" + user_id.split(":", 1)[1]
    held = []
    for i in range(12):
        u, p = rest_credential(secret, person, time.time() + 3600 + i)
        t = connect(E, "udp", host, port)
        got = t.allocate(u, p)
        check(got.success, f"allocation {i + 1} of {person}: {got!r}")
        held.append(t)
    t = connect(E, "udp", host, port)
    got = t.allocate(*rest_credential(secret, person, time.time() + 600))
    check(not got.success and got.code == 486, f"a 13th allocation of {person}: {got!r}, expected 486")
    t.close()
    for t in held:
        t.release()
        t.close()
    ok(f"user-quota: {person} holds 12 allocations at once (credentials of different expiries count together), "
       "the 13th is refused (486)")


def cmd_loopback_allowed():
    """The check's own copy that allows 127.0.0.1 only: 127.0.0.2 is still refused by the rendered ranges."""
    E = load_env(sys.argv[2])
    creds = json.load(open(sys.argv[3]))
    transport, host, port = turn_endpoints(E, creds)[0]
    t = connect(E, transport, host, port)
    got = t.allocate(creds["username"], creds["password"])
    check(got.success, f"Allocate: {got!r}")
    got = t.permit("127.0.0.1")
    check(got.success, f"CreatePermission for 127.0.0.1 (allowed in the check's copy): {got!r}")
    for a in ("127.0.0.2", "10.0.0.1"):
        got = t.permit(a)
        check(not got.success and got.code == 403, f"CreatePermission for {a}: {got!r}, expected 403")
    t.release()
    t.close()
    ok("the check's copy (allow-loopback-peers, allowed-peer-ip=127.0.0.1) opens 127.0.0.1 alone: 127.0.0.2 is "
       "still refused (403), by the rendered denied-peer-ip range, not by coturn's built-in loopback rule")


def cmd_relay():
    """Synapse's credential relays to turnutils_peer (which echoes) on 127.0.0.1, over each URI."""
    E = load_env(sys.argv[2])
    creds = json.load(open(sys.argv[3]))
    peer_port = int(sys.argv[4])
    done = []
    for transport, host, port in turn_endpoints(E, creds):
        t = connect(E, transport, host, port)
        got = t.allocate(creds["username"], creds["password"])
        check(got.success, f"Allocate over {transport}: {got!r}")
        got = t.permit("127.0.0.1", peer_port)
        check(got.success, f"CreatePermission for 127.0.0.1 over {transport}: {got!r}")
        for i in range(5):
            payload = f"call packet {i} over {transport} ".encode() * 4
            peer, echo = t.relay("127.0.0.1", peer_port, payload)
            check(peer == ("127.0.0.1", peer_port) and echo == payload,
                  f"over {transport}: {payload!r} came back from {peer} as {echo!r}")
        t.release()
        t.close()
        done.append(transport)
    ok(f"turn-client.py with Synapse's credential relays 5 packets each to turnutils_peer on 127.0.0.1 and gets "
       f"them back, over {', '.join(done)} (TLS: the certificate checked)")


def cmd_rotation():
    """TURN_SHARED_SECRET=NEW,OLD: Synapse signs with NEW, coturn accepts both."""
    E = load_env(sys.argv[2])
    creds = json.load(open(sys.argv[3]))
    import yaml
    new, old = E["TURN_SHARED_SECRET"].split(",")
    hs = yaml.safe_load(open(os.path.join(rendered_dir(E), "synapse", "homeserver.yaml"), encoding="utf8"))
    check(hs["turn_shared_secret"] == new, "rotation: Synapse does not sign with the first key")
    transport, host, port = turn_endpoints(E, creds)[0]
    for what, (u, p) in {
        "Synapse's credential of the old key": (creds["username"], creds["password"]),
        "a credential of the new key": rest_credential(new, creds["user_id"], time.time() + 600),
    }.items():
        t = connect(E, transport, host, port)
        got = t.allocate(u, p)
        check(got.success, f"rotation: {what}: {got!r}")
        t.release()
        t.close()
    t = connect(E, transport, host, port)
    got = t.allocate(*rest_credential("retired-" + old, creds["user_id"], time.time() + 600))
    check(not got.success and got.code == 401, f"rotation: a third key's credential: {got!r}")
    t.close()
    ok("TURN_SHARED_SECRET=NEW,OLD (rotation, step 1): Synapse signs with NEW; coturn accepts the credentials "
       "handed out with OLD and those of NEW, and nothing else")


def cmd_tls_cert():
    """The SHA-256 of the certificate coturn presents on the TLS port."""
    E = load_env(sys.argv[2])
    creds = json.load(open(sys.argv[3]))
    _, host, port = [e for e in turn_endpoints(E, creds) if e[0] == "tls"][0]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=5) as raw, ctx.wrap_socket(raw) as s:
        print(hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest())


if __name__ == "__main__":
    {"rendered": cmd_rendered, "compose": cmd_compose, "synapse": cmd_synapse, "coturn": cmd_coturn,
     "loopback-allowed": cmd_loopback_allowed, "relay": cmd_relay, "rotation": cmd_rotation, "tls-cert": cmd_tls_cert}[sys.argv[1]]()
