// An OPC UA server from another implementation (npm `node-opcua`) for tests/opcua_node.rs and
// the load benchmark (benches/opcua/load.sh).
//
// Serves, in namespace `urn:tidegate:test` (ns=2), one variable of every type the driver maps
// (SPEC 8), a writable Double and Int16, a variable that is Bad (BadSensorFailure), one with a
// fixed source timestamp, a counter that changes every 200 ms, and numeric, GUID and opaque
// node ids. Endpoints: None/None (anonymous) and Basic256Sha256 SignAndEncrypt (anonymous or
// user `op` / `secret`); the server's certificate is made under `--dir` on first start.
//
// Usage: node server.js --dir DIR [--port N] [--items N]
// Prints `READY <port>` on stdout once it accepts connections, then `SUBSCRIPTIONS <n>` (the
// subscriptions the server holds, over all sessions) each second. `--items N` adds N Double
// variables `ns=2;s=Load/<i>` that all change every second (the benchmark), and each second
// `CHANGES <total>`: the load value changes made so far (the rate the server really offered).
"use strict";

const fs = require("fs");
const net = require("net");
const path = require("path");
const {
    OPCUAServer,
    OPCUACertificateManager,
    Variant,
    DataType,
    StatusCodes,
    SecurityPolicy,
    MessageSecurityMode,
    nodesets,
} = require("node-opcua");

function arg(name, dflt) {
    const i = process.argv.indexOf(name);
    return i >= 0 ? process.argv[i + 1] : dflt;
}

function freePort() {
    return new Promise((resolve, reject) => {
        const s = net.createServer();
        s.on("error", reject);
        s.listen(0, "127.0.0.1", () => {
            const { port } = s.address();
            s.close(() => resolve(port));
        });
    });
}

async function main() {
    const dir = arg("--dir");
    if (!dir) {
        throw new Error("--dir DIR is required");
    }
    fs.mkdirSync(dir, { recursive: true });
    const port = Number(arg("--port", 0)) || (await freePort());
    const items = Number(arg("--items", 0));

    const serverCertificateManager = new OPCUACertificateManager({
        automaticallyAcceptUnknownCertificate: true,
        rootFolder: path.join(dir, "pki"),
    });
    const server = new OPCUAServer({
        port,
        hostname: "127.0.0.1",
        resourcePath: "/tidegate/",
        nodeset_filename: [nodesets.standard],
        serverCertificateManager,
        securityPolicies: [SecurityPolicy.None, SecurityPolicy.Basic256Sha256],
        securityModes: [MessageSecurityMode.None, MessageSecurityMode.SignAndEncrypt],
        allowAnonymous: true,
        userManager: {
            isValidUser: (username, password) => username === "op" && password === "secret",
        },
        // The load benchmark subscribes to 10,000 items in one subscription.
        serverCapabilities: {
            maxMonitoredItems: 200000,
            maxMonitoredItemsPerSubscription: 200000,
            operationLimits: { maxNodesPerRead: 20000, maxMonitoredItemsPerCall: 20000 },
        },
        buildInfo: { productName: "tidegate node-opcua test server" },
    });
    await server.initialize();

    const addressSpace = server.engine.addressSpace;
    const ns = addressSpace.registerNamespace("urn:tidegate:test");
    if (ns.index !== 2) {
        throw new Error(`namespace index ${ns.index}, expected 2`);
    }
    const folder = ns.addFolder(addressSpace.rootFolder.objects, {
        nodeId: "s=Demo",
        browseName: "Demo",
    });
    const variable = (name, dataType, value, options = {}) => {
        const v = ns.addVariable({
            componentOf: folder,
            nodeId: options.nodeId || `s=Demo/${name}`,
            browseName: name,
            dataType,
            valueRank: options.array ? 1 : -1,
            arrayDimensions: options.array ? [value.length] : null,
            accessLevel: options.writable ? "CurrentRead | CurrentWrite" : "CurrentRead",
            userAccessLevel: options.writable ? "CurrentRead | CurrentWrite" : "CurrentRead",
        });
        v.setValueFromSource(
            new Variant({
                dataType: DataType[dataType],
                arrayType: options.array ? 1 : 0,
                value: options.array ? Float64Array.from(value) : value,
            }),
            StatusCodes.Good
        );
        return v;
    };

    variable("Bool", "Boolean", true);
    variable("SByte", "SByte", -5);
    variable("Byte", "Byte", 200);
    variable("Int16", "Int16", -300);
    variable("UInt16", "UInt16", 60000);
    variable("Int32", "Int32", -70000);
    variable("UInt32", "UInt32", 4000000000);
    variable("Int64", "Int64", [0xfffffffe, 0xd5fa0e00]); // -5000000000: [high, low], two's complement
    variable("UInt64", "UInt64", [2, 0x18711a00]); // 9000000000 as [high, low]
    variable("Float", "Float", 1.5);
    variable("Double", "Double", 2.25);
    variable("String", "String", "hello");
    variable("DateTime", "DateTime", new Date(Date.UTC(2024, 0, 1)));
    variable("Array", "Double", [1.0, 2.0, 3.0], { array: true });
    variable("ByNumber", "Int32", 7, { nodeId: "i=1005" });
    variable("ByGuid", "Int32", 8, { nodeId: "g=72962b91-fa75-4ae6-8d28-b404dc7daf63" });
    variable("ByOpaque", "Int32", 9, { nodeId: "b=AQJ0YWc=" }); // the bytes 01 02 't' 'a' 'g'
    const stamped = variable("Stamped", "Double", 3.5);
    stamped.setValueFromSource(
        new Variant({ dataType: DataType.Double, value: 3.5 }),
        StatusCodes.Good,
        new Date(Date.UTC(2024, 0, 1))
    );
    variable("Setpoint", "Double", 10.0, { writable: true });
    variable("Level", "Int16", 1, { writable: true });
    const broken = variable("Broken", "Double", 0.0);
    broken.setValueFromSource(
        new Variant({ dataType: DataType.Double, value: 0.0 }),
        StatusCodes.BadSensorFailure
    );
    const counter = variable("Counter", "Int32", 0);

    const load = [];
    if (items > 0) {
        const lf = ns.addFolder(addressSpace.rootFolder.objects, {
            nodeId: "s=Load",
            browseName: "Load",
        });
        for (let i = 0; i < items; i++) {
            const v = ns.addVariable({
                componentOf: lf,
                nodeId: `s=Load/${i}`,
                browseName: `L${i}`,
                dataType: "Double",
            });
            v.setValueFromSource(new Variant({ dataType: DataType.Double, value: 0.0 }));
            load.push(v);
        }
    }

    await server.start();
    process.stdout.write(`READY ${port}\n`);

    let n = 0;
    let changes = 0;
    setInterval(() => {
        n += 1;
        counter.setValueFromSource(new Variant({ dataType: DataType.Int32, value: n }));
        if (n % 5 === 0) {
            let subs = 0;
            for (const session of Object.values(server.engine._sessions || {})) {
                subs += session.publishEngine ? session.publishEngine.subscriptionCount : 0;
            }
            // Subscriptions whose session is gone wait for a transfer: count them too.
            subs += server.engine._orphanPublishEngine
                ? server.engine._orphanPublishEngine.subscriptionCount
                : 0;
            process.stdout.write(`SUBSCRIPTIONS ${subs}\n`);
            for (let i = 0; i < load.length; i++) {
                load[i].setValueFromSource(
                    new Variant({ dataType: DataType.Double, value: n + i })
                );
            }
            changes += load.length;
            if (load.length > 0) {
                process.stdout.write(`CHANGES ${changes}\n`);
            }
        }
    }, 200);

    const stop = async () => {
        await server.shutdown(0);
        process.exit(0);
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
}

main().catch((err) => {
    process.stderr.write(`node-opcua server: ${err.stack || err}\n`);
    process.exit(1);
});
