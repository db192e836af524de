// A second Sparkplug B decoder for tests/sparkplug.rs: Eclipse Tahu's JavaScript
// `sparkplug-payload`. Reads a JSON array of {topic, raw (hex)} on stdin and prints, as one
// JSON array, each payload as that library decodes it (64-bit numbers as JS numbers; a
// payload it cannot decode fails the run).
"use strict";
const spb = require("sparkplug-payload").get("spBv1.0");

function num(v) {
  if (v === undefined || v === null) return null;
  if (typeof v === "object" && typeof v.toString === "function" && "low" in v) {
    return Number(v.toString());
  }
  return v;
}

let input = "";
process.stdin.on("data", (c) => (input += c));
process.stdin.on("end", () => {
  const out = JSON.parse(input).map(({ topic, raw }) => {
    const p = spb.decodePayload(Buffer.from(raw, "hex"));
    const metrics = (p.metrics || []).map((m) => ({
      name: m.name === undefined ? null : m.name,
      alias: num(m.alias),
      type: m.type === undefined ? null : m.type,
      value: m.value === undefined ? null : num(m.value),
      timestamp: num(m.timestamp),
      historical: m.isHistorical === true,
      properties: m.properties || null,
    }));
    const bd = metrics.find((m) => m.name === "bdSeq");
    return {
      topic,
      timestamp: num(p.timestamp),
      seq: num(p.seq),
      metrics,
      bdSeq: bd ? bd.value : null,
    };
  });
  process.stdout.write(JSON.stringify(out));
});
