-- wrk script of bench/publish.py: POST /publish with ~1 KiB CloudEvents, each with its own id.
--
-- JetStream drops an event whose (source, id) it stored in the last two minutes, so a repeated
-- id would be acknowledged without being written and flatter the figures; every event gets
-- "<run tag>-<wrk thread>-<counter>[-<index in batch>]" instead.
--
-- Arguments after "--": run tag, mode ("binary", "batch" or "legacy": a legacy Kyma event to
-- /bench/v1/events, whose id the proxy makes), data bytes, events per batch, and
-- the Authorization header to send ("": none).
-- done() prints one "BENCH_RESULT {json}" line, which bench/publish.py reads.

local threads = {}

function setup(thread)
   thread:set("thread_number", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   prefix = args[1] .. "-" .. thread_number .. "-"
   mode = args[2]
   batch_size = tonumber(args[4])
   data = '{"order":"' .. string.rep("x", tonumber(args[3]) - 12) .. '"}'
   authorization = args[5] or ""
   counter = 0
end

local function with_credentials(headers)
   if authorization ~= "" then
      headers["Authorization"] = authorization
   end
   return headers
end

local function binary_request()
   return wrk.format("POST", nil, with_credentials({
      ["Content-Type"] = "application/json",
      ["ce-specversion"] = "1.0",
      ["ce-id"] = prefix .. counter,
      ["ce-source"] = "bench",
      ["ce-type"] = "order.created.v1",
   }), data)
end

local function batch_request()
   local events = {}
   for i = 1, batch_size do
      events[i] = '{"specversion":"1.0","id":"' .. prefix .. counter .. "-" .. i
         .. '","source":"bench","type":"order.created.v1",'
         .. '"datacontenttype":"application/json","data":' .. data .. "}"
   end
   return wrk.format("POST", nil, with_credentials({
      ["Content-Type"] = "application/cloudevents-batch+json",
   }), "[" .. table.concat(events, ",") .. "]")
end

local function legacy_request()
   return wrk.format("POST", "/bench/v1/events", with_credentials({
      ["Content-Type"] = "application/json",
   }), '{"event-type":"order.created","event-type-version":"v1",'
      .. '"event-time":"2020-04-02T21:37:00Z","data":' .. data .. "}")
end

function request()
   counter = counter + 1
   if mode == "batch" then
      return batch_request()
   elseif mode == "legacy" then
      return legacy_request()
   end
   return binary_request()
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d,'
         .. ' "status_errors": %d, "socket_errors": %d}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      e.status, e.connect + e.read + e.write + e.timeout))
end
