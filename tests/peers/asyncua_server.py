"""An OPC UA server from another implementation (PyPI `asyncua`) for tests/opcua.rs.

Serves, in namespace `urn:tidegate:test`, one variable of every type the driver maps
(SPEC 8), a writable Double and Int16, a variable that is Bad (BadSensorFailure), one with a
fixed source timestamp, a counter that changes every 200 ms, and variables with GUID and
opaque node ids. Endpoints: None/None (anonymous) and Basic256Sha256 SignAndEncrypt
(anonymous or user `op` / `secret`).

Usage: asyncua_server.py --dir DIR [--port N] [--items N]
Prints `READY <port>` on stdout once it accepts connections, then `SUBSCRIPTIONS <n>` (the
subscriptions the server holds, over all sessions) each second. `--items N` adds N Double
variables `ns=2;s=Load/<i>` that all change every second (the benchmark), and each second
`CHANGES <total>`: the load value changes made so far (the rate the server really offered).
"""

import argparse
import asyncio
import datetime
import socket
import sys
import uuid
from pathlib import Path

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto import cert_gen
from asyncua.server.user_managers import UserManager
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.hazmat.primitives import serialization

URI = "urn:tidegate:test"
APP_URI = "urn:tidegate:test:server"
GUID = uuid.UUID("72962b91-fa75-4ae6-8d28-b404dc7daf63")


class Users(UserManager):
    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username is None:
            return User(role=UserRole.User)
        if username == "op" and password == "secret":
            return User(role=UserRole.User, name=username)
        return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def certificate(dir: Path):
    """The server's certificate and key, made once per test directory."""
    cert, key = dir / "server-cert.der", dir / "server-key.pem"
    if not cert.exists():
        k = cert_gen.generate_private_key()
        c = cert_gen.generate_self_signed_app_certificate(
            k,
            "tidegate test server",
            {},
            [x509.UniformResourceIdentifier(APP_URI), x509.DNSName("localhost"), x509.DNSName("127.0.0.1")],
            extended=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        key.write_bytes(cert_gen.dump_private_key_as_pem(k))
        cert.write_bytes(c.public_bytes(serialization.Encoding.DER))
    return cert, key


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--items", type=int, default=0)
    args = ap.parse_args()
    dir = Path(args.dir)
    dir.mkdir(parents=True, exist_ok=True)
    port = args.port or free_port()

    server = Server(user_manager=Users())
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/tidegate/")
    await server.set_application_uri(APP_URI)
    server.set_security_policy(
        [ua.SecurityPolicyType.NoSecurity, ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
    )
    server.set_security_IDs(["Anonymous", "Username"])
    cert, key = certificate(dir)
    await server.load_certificate(str(cert))
    await server.load_private_key(str(key))
    idx = await server.register_namespace(URI)
    assert idx == 2, idx
    objects = server.nodes.objects
    folder = await objects.add_folder(ua.NodeId("Demo", idx), "Demo")

    async def var(name, value, vtype, node_id=None):
        nid = node_id or ua.NodeId(f"Demo/{name}", idx)
        return await folder.add_variable(nid, name, ua.Variant(value, vtype))

    VT = ua.VariantType
    await var("Bool", True, VT.Boolean)
    await var("SByte", -5, VT.SByte)
    await var("Byte", 200, VT.Byte)
    await var("Int16", -300, VT.Int16)
    await var("UInt16", 60000, VT.UInt16)
    await var("Int32", -70000, VT.Int32)
    await var("UInt32", 4000000000, VT.UInt32)
    await var("Int64", -5000000000, VT.Int64)
    await var("UInt64", 9000000000, VT.UInt64)
    await var("Float", 1.5, VT.Float)
    await var("Double", 2.25, VT.Double)
    await var("String", "hello", VT.String)
    await var("DateTime", datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc), VT.DateTime)
    await var("Array", [1.0, 2.0, 3.0], VT.Double)
    await var("ByNumber", 7, VT.Int32, ua.NodeId(1005, idx))
    await var("ByGuid", 8, VT.Int32, ua.NodeId(GUID, idx, ua.NodeIdType.Guid))
    await var("ByOpaque", 9, VT.Int32, ua.NodeId(b"\x01\x02tag", idx, ua.NodeIdType.ByteString))
    setpoint = await var("Setpoint", 10.0, VT.Double)
    await setpoint.set_writable()
    level = await var("Level", 1, VT.Int16)
    await level.set_writable()
    broken = await var("Broken", 0.0, VT.Double)
    await broken.write_value(
        ua.DataValue(ua.Variant(0.0, VT.Double), StatusCode=ua.StatusCode(ua.StatusCodes.BadSensorFailure))
    )
    stamped = await var("Stamped", 3.5, VT.Double)
    await stamped.write_value(
        ua.DataValue(
            ua.Variant(3.5, VT.Double),
            SourceTimestamp=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
        )
    )
    counter = await var("Counter", 0, VT.Int32)
    load = []
    if args.items:
        lf = await objects.add_folder(ua.NodeId("Load", idx), "Load")
        for i in range(args.items):
            load.append(await lf.add_variable(ua.NodeId(f"Load/{i}", idx), f"L{i}", ua.Variant(0.0, VT.Double)))

    async with server:
        print(f"READY {port}", flush=True)
        n = 0
        changes = 0
        while True:
            await asyncio.sleep(0.2)
            n += 1
            await counter.write_value(ua.Variant(n, VT.Int32))
            if n % 5 == 0:
                subs = len(server.iserver.subscription_service.subscriptions)
                print(f"SUBSCRIPTIONS {subs}", flush=True)
            if load and n % 5 == 0:
                for i, v in enumerate(load):
                    await v.write_value(ua.Variant(float(n + i), VT.Double))
                changes += len(load)
                print(f"CHANGES {changes}", flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
