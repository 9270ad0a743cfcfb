// Publishes and receives CloudEvents with the npm `cloudevents` SDK, for tests/interop.
//
//   node interop.js publish URL binary|structured < events.jsonl   one result line per event
//   node interop.js receive PORT                                   one line per event received
//
// The SDK serialises (HTTP.binary, HTTP.structured) and parses (HTTP.toEvent); node's http
// module carries the bytes, as the SDK's own httpTransport does, but keeps the answer's status,
// which httpTransport drops. The SDK has no batch serialiser, so there is no batch mode here.
"use strict";

const http = require("http");
const { CloudEvent, HTTP } = require("cloudevents");

function toEvent(neutral) {
  const properties = { id: neutral.id, source: neutral.source, type: neutral.type };
  for (const name of ["subject", "time", "datacontenttype"]) {
    if (neutral[name] !== undefined && neutral[name] !== null) properties[name] = neutral[name];
  }
  Object.assign(properties, neutral.extensions);
  if (neutral.data_json !== undefined && neutral.data_json !== null) {
    properties.data = neutral.data_json;
  } else if (neutral.data_base64 !== undefined && neutral.data_base64 !== null) {
    properties.data = Buffer.from(neutral.data_base64, "base64");
  }
  return new CloudEvent(properties);
}

function post(url, message) {
  return new Promise((resolve) => {
    try {
      const request = http.request(url, { method: "POST", headers: message.headers }, (response) => {
        let body = "";
        response.setEncoding("utf-8");
        response.on("data", (chunk) => (body += chunk));
        response.on("end", () => resolve({ status: response.statusCode, body }));
      });
      request.on("error", (error) => resolve({ status: 0, body: String(error) }));
      if (message.body !== undefined) request.write(message.body);
      request.end();
    } catch (error) {
      resolve({ status: 0, body: String(error) }); // e.g. a header value node refuses to send
    }
  });
}

async function publish(url, mode) {
  const serialise = { binary: HTTP.binary, structured: HTTP.structured }[mode];
  if (!serialise) throw new Error(`unknown mode ${mode}`);
  const lines = require("fs").readFileSync(0, "utf-8").split("\n").filter(Boolean);
  for (const line of lines) {
    const neutral = JSON.parse(line);
    let outcome;
    try {
      outcome = await post(url, serialise(toEvent(neutral)));
    } catch (error) {
      outcome = { status: 0, body: String(error) };
    }
    const result = { id: neutral.id, status: outcome.status };
    if (outcome.status === 0 || outcome.status >= 300) result.error = outcome.body;
    process.stdout.write(JSON.stringify(result) + "\n");
  }
}

// The event as the SDK holds it: every attribute and extension, data bytes in base64.
function received(event) {
  const attributes = {};
  let data = null;
  for (const [name, value] of Object.entries(event)) {
    if (value === undefined || name === "data_base64") continue;
    if (name === "data") {
      // The SDK hands JSON data over parsed (a JSON string as a string), anything else as read.
      const parsed = /^application\/([^;]*\+)?json/i.test(event.datacontenttype || "");
      const bytes =
        ArrayBuffer.isView(value) || (typeof value === "string" && !parsed)
          ? Buffer.from(value)
          : Buffer.from(JSON.stringify(value));
      data = bytes.toString("base64");
    } else {
      attributes[name] = value;
    }
  }
  return { attributes, data_base64: data };
}

function receive(port) {
  const server = http.createServer((request, response) => {
    const chunks = [];
    request.on("data", (chunk) => chunks.push(chunk));
    request.on("end", () => {
      let line;
      try {
        const body = Buffer.concat(chunks);
        line = received(HTTP.toEvent({ headers: request.headers, body: body.length ? body : undefined }));
        response.writeHead(204);
      } catch (error) {
        line = { error: String(error) };
        response.writeHead(400);
      }
      process.stdout.write(JSON.stringify(line) + "\n");
      response.end();
    });
  });
  server.listen(Number(port), "127.0.0.1");
}

const [command, ...args] = process.argv.slice(2);
if (command === "publish" && args.length === 2) {
  publish(...args).catch((error) => {
    process.stderr.write(String(error) + "\n");
    process.exit(1);
  });
} else if (command === "receive" && args.length === 1) {
  receive(args[0]);
} else {
  process.stderr.write("usage: interop.js publish URL MODE < events.jsonl | interop.js receive PORT\n");
  process.exit(2);
}
