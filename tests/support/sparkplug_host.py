#!/usr/bin/env python3
"""A Sparkplug B host application from another implementation, for tests/sparkplug.rs.

Decodes with pysparkplug (its own protobuf of Tahu's sparkplug_b.proto, the payload classes
and its birth tracking: DDATA aliases and datatypes are resolved from the DBIRTH it saw), over
a paho-mqtt connection to the server (Mosquitto in the tests).

    sparkplug_host.py HOST PORT GROUP [--primary HOST_ID]

stdout: one JSON line per Sparkplug message received under spBv1.0/GROUP/#, then
`{"event": "subscribed"}` once the subscription is acknowledged.
stdin, one command a line:
    rebirth NODE                      NCMD Node Control/Rebirth = true
    dcmd NODE DEVICE TAG JSON_VALUE   DCMD writing one metric (datatype from the DBIRTH)
    state online|offline              publish this host's STATE (retained, Sparkplug 3.0 JSON)
    quit
"""

import json
import sys
import threading

import paho.mqtt.client as mqtt
import pysparkplug as spb

host, port, group = sys.argv[1], int(sys.argv[2]), sys.argv[3]
primary = sys.argv[5] if len(sys.argv) > 5 and sys.argv[4] == "--primary" else None

births = {}
out_lock = threading.Lock()


def emit(obj):
    with out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def metric_json(m):
    value = m.value
    if isinstance(value, bytes):
        value = value.hex()
    return {
        "name": m.name,
        "alias": m.alias,
        "value": value,
        "timestamp": m.timestamp,
        "historical": m.is_historical,
        "null": m.is_null,
        "datatype": m.datatype.name if m.datatype is not None else None,
    }


def on_message(_c, _u, msg):
    try:
        topic = spb.Topic.from_str(msg.topic)
        if topic.message_type == spb.MessageType.STATE:
            return
        key = (topic.group_id, topic.edge_node_id, topic.device_id)
        payload = topic.message_type.payload.decode(msg.payload, birth=births.get(key))
        if isinstance(payload, (spb.NBirth, spb.DBirth)):
            births[key] = payload
        kind = str(topic.message_type.value if hasattr(topic.message_type, "value") else topic.message_type)
        record = {
            "topic": msg.topic,
            "type": kind,
            "node": topic.edge_node_id,
            "device": topic.device_id,
            "qos": msg.qos,
            "retain": bool(msg.retain),
            "timestamp": getattr(payload, "timestamp", None),
            "seq": getattr(payload, "seq", None),
            "raw": msg.payload.hex(),
        }
        if isinstance(payload, spb.NDeath):
            record["metrics"] = [metric_json(payload.bd_seq_metric)]
        else:
            record["metrics"] = [metric_json(m) for m in getattr(payload, "metrics", ())]
        emit(record)
    except Exception as e:  # a payload this decoder rejects is a test failure, reported
        emit({"topic": msg.topic, "error": repr(e), "raw": msg.payload.hex()})


def state_payload(online):
    return json.dumps({"online": online, "timestamp": spb.get_current_timestamp()})


def on_connect(c, _u, _f, rc):
    if rc != 0:
        emit({"event": "connect_failed", "rc": rc})
        return
    if primary:
        c.publish(f"spBv1.0/STATE/{primary}", state_payload(True), qos=1, retain=True)
    c.subscribe(f"spBv1.0/{group}/#", qos=1)


def on_subscribe(_c, _u, _mid, _granted):
    emit({"event": "subscribed"})


client = mqtt.Client(client_id=f"host-{primary or 'any'}", clean_session=True)
client.on_connect = on_connect
client.on_message = on_message
client.on_subscribe = on_subscribe
if primary:
    client.will_set(f"spBv1.0/STATE/{primary}", state_payload(False), qos=1, retain=True)
client.connect(host, port, keepalive=30)
client.loop_start()


def command(node, device, metrics):
    now = spb.get_current_timestamp()
    if device is None:
        payload = spb.NCmd(timestamp=now, metrics=metrics)
        topic = f"spBv1.0/{group}/NCMD/{node}"
    else:
        payload = spb.DCmd(timestamp=now, metrics=metrics)
        topic = f"spBv1.0/{group}/DCMD/{node}/{device}"
    client.publish(topic, payload.encode(include_dtypes=True), qos=0).wait_for_publish()
    emit({"event": "sent", "topic": topic})


for line in sys.stdin:
    parts = line.split(maxsplit=4)
    if not parts:
        continue
    if parts[0] == "quit":
        break
    if parts[0] == "rebirth":
        m = spb.Metric(timestamp=spb.get_current_timestamp(), name="Node Control/Rebirth",
                       datatype=spb.DataType.BOOLEAN, value=True)
        command(parts[1], None, (m,))
    elif parts[0] == "dcmd":
        node, device, tag, value = parts[1], parts[2], parts[3], json.loads(parts[4])
        birth = births[(group, node, device)]
        m = spb.Metric(timestamp=spb.get_current_timestamp(), name=tag,
                       datatype=birth.get_dtype(tag), value=value)
        command(node, device, (m,))
    elif parts[0] == "state":
        info = client.publish(f"spBv1.0/STATE/{primary}", state_payload(parts[1] == "online"),
                              qos=1, retain=True)
        info.wait_for_publish()
        emit({"event": "state", "online": parts[1] == "online"})

client.disconnect()
client.loop_stop()
