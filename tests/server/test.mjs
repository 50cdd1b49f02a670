// Tests examples/server from the outside, with real clients: curl, the official `openai` npm package
// (when tests/server/run.sh could install it), raw sockets for malformed requests, parallel streams,
// disconnects, and a bounded load test. Replies are checked against the CLI's greedy output for the
// same prompt (both use gemma2_generate's rules), not only for a 200.
//
//   node tests/server/test.mjs PORT CLI MODEL_DIR TOKENIZER [OPENAI_DIR]
//
// The server runs on MODEL_DIR with --parallel 2 --queue 6 -c 4096; CLI is ./gemma2, run once per
// prompt for the expected greedy replies (MAX tokens each).
import http from 'node:http';
import net from 'node:net';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { pathToFileURL } from 'node:url';

const [port, cli, modelDir, tokenizer, openaiDir] = process.argv.slice(2);
const MAX = 12, QUEUE = 6; // run.sh: --parallel 2 --queue 6
// tiny-realvocab's reference (tests/data/models/README.md): this chat prompt's first greedy token
const REF_PROMPT = 'Write a hello world program';
const REF_FIRST = JSON.parse(fs.readFileSync(path.join(modelDir, 'reference.json'), 'utf8')).greedy_ids[0];
// The CLI's reply (stdout, less its final newline) and its counts (stderr) for a prompt.
function cliReply(prompt, raw) {
  const args = ['-m', modelDir, '--tokenizer', tokenizer, '-p', prompt, '--temp', '0', '-n', String(MAX), '-t', '1'];
  if (raw) args.push('--raw');
  const r = spawnSync(cli, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.status !== 0) throw new Error(`${cli} failed: ${r.stderr}`);
  const out = r.stdout.toString('utf8'), err = r.stderr.toString('utf8');
  const pm = /prompt: (\d+) tokens in/.exec(err), gm = /generation: (\d+) tokens/.exec(err), sm = /stop: (.*)/.exec(err);
  return { text: out.endsWith('\n') ? out.slice(0, -1) : out, prompt_tokens: +(pm && pm[1]), completion_tokens: +(gm && gm[1]),
           finish_reason: sm && /-n reached|context/.test(sm[1]) ? 'length' : 'stop' };
}
const expect = { chat: {}, raw: {} };
for (const p of [REF_PROMPT, 'Why is the sky blue?', 'Tell me a story']) expect.chat[p] = cliReply(p, false);
for (const p of ['The capital of France is', 'Once upon a time']) expect.raw[p] = cliReply(p, true);
const base = `http://127.0.0.1:${port}`;
let failures = 0, checks = 0;
function check(ok, what) {
  checks++;
  if (!ok) { failures++; console.log(`FAIL ${what}`); }
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// One request with node's http client; resolves {status, headers, body}.
function request(method, p, body, { headers = {}, agent } = {}) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
    const len = data === undefined ? {} : { 'Content-Length': Buffer.byteLength(data, headers['Content-Type'] ? 'latin1' : 'utf8') };
    const req = http.request(base + p, { method, agent, headers: { 'Content-Type': 'application/json', ...len, ...headers } }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (data !== undefined) req.write(data, headers['Content-Type'] ? 'latin1' : 'utf8');
    req.end();
  });
}

// Bytes over a raw socket (for what http clients refuse to send); resolves with everything read until close or timeout.
function raw(bytes, { timeout = 5000, half = false } = {}) {
  return new Promise((resolve) => {
    const s = net.connect(+port, '127.0.0.1');
    const chunks = [];
    const t = setTimeout(() => { s.destroy(); resolve(Buffer.concat(chunks).toString('latin1')); }, timeout);
    s.on('data', (c) => chunks.push(c));
    s.on('close', () => { clearTimeout(t); resolve(Buffer.concat(chunks).toString('latin1')); });
    s.on('error', () => {});
    s.write(bytes);
    if (half) s.end();
  });
}

// Parses a server-sent-events body into its JSON events; checks the framing and the [DONE] end.
function sse(body, what) {
  const events = [];
  const parts = body.split('\n\n');
  check(parts[parts.length - 1] === '', `${what}: the stream ends with a blank line`);
  check(parts[parts.length - 2] === 'data: [DONE]', `${what}: the stream ends with data: [DONE]`);
  for (const p of parts.slice(0, -2)) {
    check(p.startsWith('data: '), `${what}: event framing: ${p.slice(0, 40)}`);
    try { events.push(JSON.parse(p.slice(6))); } catch { check(false, `${what}: event is JSON: ${p.slice(0, 80)}`); }
  }
  return events;
}

const chatPrompts = Object.keys(expect.chat);
const rawPrompts = Object.keys(expect.raw);
const chatBody = (prompt, extra = {}) => ({ model: 'x', messages: [{ role: 'user', content: prompt }], temperature: 0, max_tokens: MAX, ...extra });

async function testBasics() {
  let r = await request('GET', '/health');
  check(r.status === 200 && JSON.parse(r.body).status === 'ok', `/health: ${r.status} ${r.body}`);
  r = await request('GET', '/v1/models');
  const models = JSON.parse(r.body);
  check(r.status === 200 && models.object === 'list' && models.data.length === 1 && typeof models.data[0].id === 'string', `/v1/models: ${r.body}`);
}

// curl, non-streaming and streaming, against the CLI's reply.
function testCurl() {
  for (const prompt of chatPrompts) {
    const out = execFileSync('curl', ['-sS', '--max-time', '60', '-H', 'Content-Type: application/json', '-d', JSON.stringify(chatBody(prompt)),
      `${base}/v1/chat/completions`]).toString('utf8');
    const j = JSON.parse(out);
    const want = expect.chat[prompt];
    check(j.object === 'chat.completion' && j.choices[0].message.role === 'assistant', `curl chat: shape ${out.slice(0, 200)}`);
    check(j.choices[0].message.content === want.text, `curl chat "${prompt}": content ${JSON.stringify(j.choices[0].message.content)} != CLI ${JSON.stringify(want.text)}`);
    check(j.choices[0].finish_reason === want.finish_reason, `curl chat "${prompt}": finish_reason ${j.choices[0].finish_reason} != ${want.finish_reason}`);
    check(j.usage.prompt_tokens === want.prompt_tokens && j.usage.completion_tokens === want.completion_tokens &&
          j.usage.total_tokens === want.prompt_tokens + want.completion_tokens, `curl chat "${prompt}": usage ${JSON.stringify(j.usage)} vs ${JSON.stringify(want)}`);

    const s = execFileSync('curl', ['-sSN', '--max-time', '60', '-d', JSON.stringify(chatBody(prompt, { stream: true, stream_options: { include_usage: true } })),
      `${base}/v1/chat/completions`]).toString('utf8');
    const ev = sse(s, 'curl stream');
    const text = ev.filter((e) => e.choices && e.choices.length).map((e) => e.choices[0].delta.content ?? '').join('');
    check(ev[0].choices[0].delta.role === 'assistant', 'curl stream: the first delta names the role');
    check(text === want.text, `curl stream "${prompt}": ${JSON.stringify(text)} != CLI ${JSON.stringify(want.text)}`);
    const fin = ev.filter((e) => e.choices && e.choices.length && e.choices[0].finish_reason);
    check(fin.length === 1 && fin[0].choices[0].finish_reason === want.finish_reason, 'curl stream: one finish_reason');
    const u = ev[ev.length - 1].usage;
    check(u && u.completion_tokens === want.completion_tokens && u.prompt_tokens === want.prompt_tokens, `curl stream: usage ${JSON.stringify(u)}`);
  }
  for (const prompt of rawPrompts) {
    const out = execFileSync('curl', ['-sS', '--max-time', '60', '-d', JSON.stringify({ prompt, temperature: 0, max_tokens: MAX }), `${base}/v1/completions`]).toString('utf8');
    const j = JSON.parse(out);
    check(j.object === 'text_completion' && j.choices[0].text === expect.raw[prompt].text,
      `curl completions "${prompt}": ${JSON.stringify(j.choices[0].text)} != CLI --raw ${JSON.stringify(expect.raw[prompt].text)}`);
  }
}

// The KV cache of the previous conversation's common prefix is reused, and the reply is the same.
async function testPrefixReuse() {
  const prompt = chatPrompts[0], want = expect.chat[prompt];
  const first = JSON.parse((await request('POST', '/v1/chat/completions', chatBody(prompt))).body);
  const msgs = [{ role: 'user', content: prompt }, { role: 'assistant', content: first.choices[0].message.content }, { role: 'user', content: 'And again' }];
  const second = JSON.parse((await request('POST', '/v1/chat/completions', { messages: msgs, temperature: 0, max_tokens: 4 })).body);
  check(second.usage.prompt_tokens_details.cached_tokens >= want.prompt_tokens - 1,
    `prefix reuse: cached ${second.usage.prompt_tokens_details.cached_tokens} of the first turn's ${want.prompt_tokens} prompt tokens`);
  const again = JSON.parse((await request('POST', '/v1/chat/completions', chatBody(prompt))).body);
  check(again.choices[0].message.content === want.text, 'the same prompt after a longer one: the same greedy reply');
}

// stop strings, logit_bias and seeds against what the unconstrained reply shows.
async function testSampling() {
  const prompt = chatPrompts[0], want = expect.chat[prompt].text;
  // a stop string taken from the middle of the greedy reply: the reply is cut just before it
  const cut = Math.floor(want.length / 2), stop = want.slice(cut, cut + 3);
  if (stop.trim().length === 3) {
    const j = JSON.parse((await request('POST', '/v1/chat/completions', chatBody(prompt, { stop: [stop, 'zzzzqqq'] }))).body);
    check(j.choices[0].message.content === want.slice(0, want.indexOf(stop)) && j.choices[0].finish_reason === 'stop',
      `stop ${JSON.stringify(stop)}: ${JSON.stringify(j.choices[0].message.content)}`);
    const s = sse((await request('POST', '/v1/chat/completions', chatBody(prompt, { stop, stream: true }))).body, 'stream stop');
    const text = s.map((e) => e.choices[0].delta.content ?? '').join('');
    check(text === want.slice(0, want.indexOf(stop)), `stream stop: ${JSON.stringify(text)}`);
  }
  // banning the first greedy token changes the reply; +100 on a token (25612, ' hello') makes it the reply
  const j = JSON.parse((await request('POST', '/v1/chat/completions', chatBody(REF_PROMPT, { logit_bias: { [String(REF_FIRST)]: -100 }, max_tokens: 1 }))).body);
  const one = JSON.parse((await request('POST', '/v1/chat/completions', chatBody(REF_PROMPT, { max_tokens: 1 }))).body);
  check(one.choices[0].message.content.length > 0 && j.choices[0].message.content !== one.choices[0].message.content,
    `logit_bias -100 on token ${REF_FIRST}: the first token is still ${JSON.stringify(j.choices[0].message.content)}`);
  const h = JSON.parse((await request('POST', '/v1/chat/completions', chatBody(REF_PROMPT, { logit_bias: { 25612: 100 }, max_tokens: 3 }))).body);
  check(h.choices[0].message.content === ' hello hello hello', `logit_bias +100: ${JSON.stringify(h.choices[0].message.content)}`);
  // same seed, same reply; temperature 1 samples
  const a = JSON.parse((await request('POST', '/v1/chat/completions', chatBody(prompt, { temperature: 1, top_p: 0.9, seed: 7 }))).body);
  const b = JSON.parse((await request('POST', '/v1/chat/completions', chatBody(prompt, { temperature: 1, top_p: 0.9, seed: 7 }))).body);
  check(a.choices[0].message.content === b.choices[0].message.content, 'seed: the same seed gives the same reply');
}

// Malformed and refused requests: status, a JSON error body, and the server still serving.
async function testErrors() {
  const longPrompt = 'word '.repeat(5000);
  const cases = [
    ['POST', '/v1/chat/completions', '{bad', 400],
    ['POST', '/v1/chat/completions', '[]', 400],
    ['POST', '/v1/chat/completions', '', 400],
    ['POST', '/v1/chat/completions', { messages: [] }, 400],
    ['POST', '/v1/chat/completions', { messages: 'hi' }, 400],
    ['POST', '/v1/chat/completions', { messages: [{ role: 'robot', content: 'x' }] }, 400],
    ['POST', '/v1/chat/completions', { messages: [{ role: 'user', content: 'a' }, { role: 'user', content: 'b' }] }, 400],
    ['POST', '/v1/chat/completions', { messages: [{ role: 'user', content: 5 }] }, 400],
    ['POST', '/v1/chat/completions', { messages: [{ role: 'user' }] }, 400],
    ['POST', '/v1/chat/completions', chatBody('x', { temperature: 'hot' }), 400],
    ['POST', '/v1/chat/completions', chatBody('x', { temperature: -1 }), 400],
    ['POST', '/v1/chat/completions', chatBody('x', { max_tokens: -1 }), 400],
    ['POST', '/v1/chat/completions', chatBody('x', { max_tokens: 1.5 }), 400],
    ['POST', '/v1/chat/completions', chatBody('x', { stop: 5 }), 400],
    ['POST', '/v1/chat/completions', chatBody('x', { stop: [''] }), 400],
    ['POST', '/v1/chat/completions', chatBody('x', { logit_bias: { abc: 1 } }), 400],
    ['POST', '/v1/chat/completions', chatBody('x', { logit_bias: { 999999: 1 } }), 400],
    ['POST', '/v1/chat/completions', chatBody('x', { logit_bias: { 5: 1000 } }), 400],
    ['POST', '/v1/chat/completions', chatBody('x', { n: 2 }), 400],
    ['POST', '/v1/chat/completions', chatBody('x', { stream: 'yes' }), 400],
    ['POST', '/v1/completions', { prompt: 5 }, 400],
    ['POST', '/v1/completions', {}, 400],
    ['POST', '/v1/completions', { prompt: longPrompt }, 400],
    ['GET', '/v1/chat/completions', undefined, 405],
    ['POST', '/health', '{}', 405],
    ['GET', '/nope', undefined, 404],
    ['GET', '/v1/chat/completions/x', undefined, 404],
  ];
  for (const [m, p, body, status] of cases) {
    const r = await request(m, p, body);
    let e = null;
    try { e = JSON.parse(r.body).error; } catch { /* checked below */ }
    check(r.status === status && e && typeof e.message === 'string' && typeof e.type === 'string',
      `${m} ${p} ${JSON.stringify(body)?.slice(0, 60)}: ${r.status} (want ${status}) ${r.body.slice(0, 120)}`);
    if (body && body.prompt === longPrompt)
      check(/\d{4,} tokens/.test(e.message) && /4096/.test(e.message), `too long: the message gives the numbers: ${e.message}`);
  }
  // what http clients will not send
  let r = await raw('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n{');
  check(/^HTTP\/1\.1 413 /.test(r) && /"error"/.test(r), `413: ${r.slice(0, 60)}`);
  r = await raw('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n');
  check(/^HTTP\/1\.1 411 /.test(r), `chunked: ${r.slice(0, 60)}`);
  r = await raw('GARBAGE\r\n\r\n');
  check(/^HTTP\/1\.1 400 /.test(r), `bad request line: ${r.slice(0, 60)}`);
  r = await raw('GET /health HTTP/1.1\r\nX: ' + 'a'.repeat(20000) + '\r\n\r\n');
  check(/^HTTP\/1\.1 431 /.test(r), `huge headers: ${r.slice(0, 60)}`);
  r = await raw('GET /health HTTP/1.1\r\nContent-Length: 12x\r\n\r\n');
  check(/^HTTP\/1\.1 400 /.test(r), `bad Content-Length: ${r.slice(0, 60)}`);
  r = await raw('GET /health HTTP/1.1\r\nX\x00Y: 1\r\n\r\n');
  check(/^HTTP\/1\.1 (200|400) /.test(r), `NUL in a header: ${r.slice(0, 60)}`);
  // two requests in one write (pipelined keep-alive): two answers in order
  r = await raw('GET /health HTTP/1.1\r\n\r\nGET /v1/models HTTP/1.1\r\nConnection: close\r\n\r\n');
  check((r.match(/HTTP\/1\.1 200 /g) || []).length === 2 && r.indexOf('"status"') < r.indexOf('"list"'), `pipelined: ${r.slice(0, 80)}`);
  // bytes that are not UTF-8 in content, and odd JSON
  const bad = Buffer.concat([Buffer.from('{"messages":[{"role":"user","content":"'), Buffer.from([0xff, 0xc3, 0x28, 0xed, 0xa0, 0x80]),
    Buffer.from('\\ud800 \\u0000"}],"max_tokens":2,"temperature":0}')]);
  const rr = await request('POST', '/v1/chat/completions', bad.toString('latin1'), { headers: { 'Content-Type': 'application/json; charset=latin1' } });
  check(rr.status === 200 || rr.status === 400, `invalid UTF-8 content: ${rr.status}`);
  // random bytes: never a crash
  let seed = 12345;
  const rnd = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff);
  const fuzz = [];
  for (let i = 0; i < 60; i++) {
    const n = rnd() % 400;
    const b = Buffer.alloc(n);
    for (let k = 0; k < n; k++) b[k] = rnd() & 255;
    const heads = ['', 'POST /v1/chat/completions HTTP/1.1\r\nContent-Length: ' + n + '\r\n\r\n', 'GET / HTTP/1.1\r\n'];
    fuzz.push(raw(Buffer.concat([Buffer.from(heads[i % 3]), b]), { timeout: 1500, half: true }));
  }
  await Promise.all(fuzz);
  r = await request('GET', '/health');
  check(r.status === 200, 'the server still answers after the malformed requests');
}

// Streams one request, calling onEvent(time) per event; resolves {status, text, times, events}.
function stream(p, body, { onChunk } = {}) {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const req = http.request(base + p, { method: 'POST', headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) } }, (res) => {
      const times = [];
      let buf = '';
      res.on('data', (c) => { times.push(performance.now()); buf += c.toString('utf8'); if (onChunk) onChunk(req, times.length); });
      res.on('end', () => resolve({ status: res.statusCode, body: buf, times }));
      res.on('error', () => resolve({ status: res.statusCode, body: buf, times, aborted: true }));
    });
    req.on('error', (e) => resolve({ status: 0, body: '', times: [], error: e }));
    req.end(data);
  });
}

// Two streams at once on two slots: their tokens arrive interleaved, each one as it would alone.
async function testParallel() {
  const [p1, p2] = [chatPrompts[0], chatPrompts[1]];
  const [a, b] = await Promise.all([
    stream('/v1/chat/completions', chatBody(p1, { stream: true })),
    stream('/v1/chat/completions', chatBody(p2, { stream: true })),
  ]);
  const ta = sse(a.body, 'parallel a').map((e) => e.choices[0].delta.content ?? '').join('');
  const tb = sse(b.body, 'parallel b').map((e) => e.choices[0].delta.content ?? '').join('');
  check(ta === expect.chat[p1].text && tb === expect.chat[p2].text, `parallel: replies as alone: ${JSON.stringify(ta)} / ${JSON.stringify(tb)}`);
  const interleaved = a.times.length > 2 && b.times.length > 2 && a.times[0] < b.times[b.times.length - 1] && b.times[0] < a.times[a.times.length - 1];
  check(interleaved, `parallel: streams interleave (a ${a.times.length} chunks, b ${b.times.length})`);
}

// Busy: two long streams fill the slots, QUEUE wait in the queue (--queue), the next gets 503. A client
// that disconnects frees its slot at once: a new request then finishes long before the streams would.
async function testBusyAndDisconnect() {
  const long = chatBody(chatPrompts[0], { stream: true, ignore_eos: true, max_tokens: 100000 });
  const reqs = [];
  let started = 0;
  const all = [];
  for (let i = 0; i < 2 + QUEUE; i++)
    all.push(stream('/v1/chat/completions', long, { onChunk: (req, n) => { if (n === 1) { started++; reqs.push(req); } } }));
  for (let t = 0; t < 200 && started < 2; t++) await sleep(25);
  await sleep(200);
  check(started === 2, `busy: two streams run (${started})`);
  const r = await request('POST', '/v1/chat/completions', chatBody('x'));
  check(r.status === 503 && JSON.parse(r.body).error.type, `busy: 503 beyond the queue: ${r.status} ${r.body.slice(0, 100)}`);
  // drop the running clients: the queued requests take their slots at once; drop those as they start
  for (let t = 0; t < 400 && (started < 2 + QUEUE || reqs.length); t++) {
    while (reqs.length) reqs.pop().destroy();
    await sleep(25);
  }
  check(started === 2 + QUEUE, `busy: the queued requests ran when the slots were freed (${started})`);
  const t0 = performance.now();
  const after = await request('POST', '/v1/chat/completions', chatBody(chatPrompts[0]));
  const ms = performance.now() - t0;
  check(after.status === 200 && JSON.parse(after.body).choices[0].message.content === expect.chat[chatPrompts[0]].text,
    `after disconnects: ${after.status}`);
  check(ms < 5000, `after disconnects the slots were free at once (${ms.toFixed(0)} ms)`);
  await Promise.all(all);
}

// The official client.
async function testOpenAI() {
  if (!openaiDir) { console.log('note: openai npm package not installed: its part is skipped'); return; }
  const mod = await import(pathToFileURL(path.join(openaiDir, 'node_modules', 'openai', 'index.mjs')).href).catch(() => null)
    ?? await import(pathToFileURL(path.join(openaiDir, 'node_modules', 'openai', 'index.js')).href);
  const OpenAI = mod.default ?? mod.OpenAI;
  const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'not-needed', maxRetries: 0, timeout: 60000 });
  const prompt = chatPrompts[1], want = expect.chat[prompt];
  const r = await client.chat.completions.create({ model: 'gemma', messages: [{ role: 'system', content: '' }, { role: 'user', content: prompt }], temperature: 0, max_tokens: MAX });
  check(r.choices[0].message.content === want.text && r.usage.completion_tokens === want.completion_tokens,
    `openai: non-streaming ${JSON.stringify(r.choices[0].message.content)} != ${JSON.stringify(want.text)}`);
  const s = await client.chat.completions.create({ model: 'gemma', messages: [{ role: 'user', content: prompt }], temperature: 0, max_tokens: MAX, stream: true });
  let text = '', finish = null, n = 0;
  for await (const chunk of s) {
    n++;
    if (chunk.choices.length) { text += chunk.choices[0].delta?.content ?? ''; finish = chunk.choices[0].finish_reason ?? finish; }
  }
  check(text === want.text && finish === want.finish_reason && n > 2, `openai: streaming ${JSON.stringify(text)} (${n} chunks, ${finish})`);
  const models = await client.models.list();
  check(models.data.length === 1, 'openai: models.list');
  let threw = null;
  try { await client.chat.completions.create({ model: 'gemma', messages: [] }); } catch (e) { threw = e; }
  check(threw && threw.status === 400, `openai: a bad request is an APIError with status 400 (${threw && threw.status})`);
  console.log('openai client: streaming and non-streaming chat ok');
}

// 200 requests from 8 concurrent keep-alive clients, mixed endpoints; every reply checked.
async function testLoad() {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
  const N = 200, t0 = performance.now();
  let next = 0, ok = 0;
  const worker = async () => {
    while (next < N) {
      const i = next++;
      const kind = i % 4;
      if (kind === 3) {
        const prompt = rawPrompts[i % rawPrompts.length];
        const r = await request('POST', '/v1/completions', { prompt, temperature: 0, max_tokens: MAX }, { agent });
        const j = r.status === 200 ? JSON.parse(r.body) : null;
        if (j && j.choices[0].text === expect.raw[prompt].text) ok++;
        else check(false, `load ${i}: completions ${r.status} ${r.body.slice(0, 100)}`);
      } else if (kind === 2) {
        const prompt = chatPrompts[i % chatPrompts.length];
        const r = await stream('/v1/chat/completions', chatBody(prompt, { stream: true }));
        const text = r.status === 200 ? sse(r.body, `load ${i}`).map((e) => e.choices[0].delta.content ?? '').join('') : null;
        if (text === expect.chat[prompt].text) ok++;
        else check(false, `load ${i}: stream ${r.status} ${JSON.stringify(text)}`);
      } else {
        const prompt = chatPrompts[i % chatPrompts.length];
        const r = await request('POST', '/v1/chat/completions', chatBody(prompt), { agent });
        const j = r.status === 200 ? JSON.parse(r.body) : null;
        if (j && j.choices[0].message.content === expect.chat[prompt].text && j.usage.completion_tokens === expect.chat[prompt].completion_tokens) ok++;
        else check(false, `load ${i}: chat ${r.status} ${r.body.slice(0, 100)}`);
      }
    }
  };
  const limit = 300000;
  const done = Promise.all(Array.from({ length: 8 }, worker));
  const timer = new Promise((r) => setTimeout(() => r('timeout'), limit));
  const res = await Promise.race([done, timer]);
  checks++;
  if (res === 'timeout') { failures++; console.log(`FAIL load: not done in ${limit / 1000} s (${ok} ok)`); }
  check(ok === N, `load: ${ok} of ${N} replies correct`);
  agent.destroy();
  console.log(`load: ${N} requests, 8 clients, ${((performance.now() - t0) / 1000).toFixed(1)} s, ${ok} correct`);
}

const parts = [['basics', testBasics], ['curl', testCurl], ['prefix reuse', testPrefixReuse], ['sampling', testSampling],
  ['errors', testErrors], ['parallel', testParallel], ['busy and disconnect', testBusyAndDisconnect], ['openai', testOpenAI], ['load', testLoad]];
for (const [name, fn] of parts) {
  const t = performance.now();
  const before = failures;
  try { await fn(); } catch (e) { failures++; console.log(`FAIL ${name}: ${e.stack || e}`); }
  console.log(`${failures === before ? 'ok  ' : 'FAIL'}  ${name} (${((performance.now() - t) / 1000).toFixed(1)} s)`);
}
console.log(`${checks} checks, ${failures} failed`);
process.exit(failures ? 1 : 0);
