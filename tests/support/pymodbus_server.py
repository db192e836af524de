"""A pymodbus Modbus TCP server for tidegate's end-to-end test (tests/modbus_pymodbus.rs).

Listens on 127.0.0.1 at a port the system picks and prints `LISTENING <port>`; then prints
`WRITE <function code> <address> <values>` for every write request it receives, so the test
sees what reached the device without reading it back through tidegate. Stops when stdin
closes (the test ends).

Register map (0-based addresses), unit 1:
  holding 0-1   f32 21.5, big-endian (ABCD)
  holding 2     u16 1234
  holding 3     i16 -5
  holding 10-12 "PUMP01"
  holding 100   u16 40 (the setpoint the test changes)
  input 0-1     u32 70000, low word first (CDAB)
  coil 0        on
  discrete 0    on
"""

import asyncio
import struct
import sys

from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import ModbusTcpServer


def words(fmt, value):
    raw = struct.pack(">" + fmt, value)
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def holding():
    regs = [0] * 128
    regs[0:2] = words("f", 21.5)
    regs[2] = 1234
    regs[3] = words("h", -5)[0]
    regs[10:13] = [int.from_bytes(b"PUMP01"[i : i + 2], "big") for i in (0, 2, 4)]
    regs[100] = 40
    return regs


def trace_pdu(sending, pdu):
    if not sending and pdu.function_code in (5, 6, 15, 16):
        values = getattr(pdu, "registers", None) or getattr(pdu, "bits", None)
        print(f"WRITE {pdu.function_code} {pdu.address} {list(values)}", flush=True)
    return pdu


async def main():
    # pymodbus data blocks count from 1: block address 1 is Modbus address 0.
    device = ModbusDeviceContext(
        hr=ModbusSequentialDataBlock(1, holding()),
        ir=ModbusSequentialDataBlock(1, list(reversed(words("I", 70000))) + [0] * 8),
        co=ModbusSequentialDataBlock(1, [True] + [False] * 15),
        di=ModbusSequentialDataBlock(1, [True] + [False] * 15),
    )
    context = ModbusServerContext(devices={1: device}, single=False)
    server = ModbusTcpServer(context, address=("127.0.0.1", 0), trace_pdu=trace_pdu)
    await server.serve_forever(background=True)
    port = server.transport.sockets[0].getsockname()[1]
    print(f"LISTENING {port}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await server.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
