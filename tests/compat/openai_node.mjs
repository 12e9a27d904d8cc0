// Drives Tollgate's streams with the official `openai` Node SDK (pinned in tests/browser).
//
// Run by tests/api/sdks.rs, which starts Tollgate in front of a fake upstream and passes:
// TOLLGATE_URL (the gateway's root), TOLLGATE_KEY (funded), TOLLGATE_POOR_KEY (too little money
// for any request). Prints one line per check and ends with `N passed, N failed`.

import { createRequire } from "node:module";

// The package lives in tests/browser/node_modules, next to playwright-core.
const require = createRequire(new URL("../browser/package.json", import.meta.url));
const { OpenAI } = require("openai");
const { VERSION } = require("openai/version");

const URL_ = process.env.TOLLGATE_URL;
const KEY = process.env.TOLLGATE_KEY;
const POOR_KEY = process.env.TOLLGATE_POOR_KEY;
const MODEL = process.env.TOLLGATE_MODEL ?? "test-model";
const TEXT = "Hello from the fake.";
const MESSAGES = [{ role: "user", content: "Say hello." }];

// No SDK retries: each check sees Tollgate's first answer.
const client = (apiKey = KEY) => new OpenAI({ apiKey, baseURL: `${URL_}/v1`, maxRetries: 0, timeout: 30_000 });

function assert(ok, what) {
  if (!ok) throw new Error(`assertion failed: ${what}`);
}

async function chatStream() {
  const stream = await client().chat.completions.create({ model: MODEL, messages: MESSAGES, stream: true });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  const text = chunks.map((c) => c.choices[0]?.delta?.content ?? "").join("");
  assert(text === TEXT, `text ${JSON.stringify(text)}`);
  assert(chunks.every((c) => !c.usage), "no usage chunk when the client did not ask for it");
  assert(chunks.at(-1).choices[0].finish_reason === "stop", "finish_reason");
}

async function chatStreamWithUsage() {
  const stream = await client().chat.completions.create({
    model: MODEL,
    messages: MESSAGES,
    stream: true,
    stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  const last = chunks.at(-1);
  assert(last.choices.length === 0, "the usage chunk has no choices");
  assert(last.usage?.prompt_tokens === 17 && last.usage?.completion_tokens === 5, JSON.stringify(last.usage));
}

async function chatStreamHelper() {
  const stream = client().chat.completions.stream({ model: MODEL, messages: MESSAGES });
  const deltas = [];
  stream.on("content", (delta) => deltas.push(delta));
  const completion = await stream.finalChatCompletion();
  assert(deltas.join("") === TEXT, `deltas ${JSON.stringify(deltas)}`);
  assert(completion.choices[0].message.content === TEXT, JSON.stringify(completion.choices[0]));
}

async function responsesStream() {
  const stream = client().responses.stream({ model: MODEL, input: "Say hello." });
  const kinds = [];
  const deltas = [];
  for await (const event of stream) {
    kinds.push(event.type);
    if (event.type === "response.output_text.delta") deltas.push(event.delta);
  }
  const final = await stream.finalResponse();
  assert(kinds[0] === "response.created" && kinds.at(-1) === "response.completed", kinds.join(","));
  assert(deltas.join("") === TEXT, `deltas ${JSON.stringify(deltas)}`);
  assert(final.output_text === TEXT, `output_text ${JSON.stringify(final.output_text)}`);
  assert(final.usage.input_tokens === 31 && final.usage.output_tokens === 11, JSON.stringify(final.usage));
}

async function responsesCreateStreamTrue() {
  const stream = await client().responses.create({ model: MODEL, input: "Say hello.", stream: true });
  const events = [];
  for await (const event of stream) events.push(event);
  const completed = events.filter((e) => e.type === "response.completed");
  assert(completed.length === 1 && events.at(-1).type === "response.completed", events.map((e) => e.type).join(","));
  assert(events.every((e, i) => e.sequence_number === i), "sequence numbers in order");
}

async function badKeyIsAuthenticationError() {
  try {
    await client(`sk-${"C".repeat(32)}`).chat.completions.create({ model: MODEL, messages: MESSAGES, stream: true });
  } catch (e) {
    assert(e instanceof OpenAI.AuthenticationError && e.status === 401, `${e}`);
    return;
  }
  throw new Error("no AuthenticationError");
}

async function noMoneyIs402BeforeTheStream() {
  try {
    const stream = client(POOR_KEY).responses.stream({ model: MODEL, input: "Say hello." });
    for await (const _ of stream);
  } catch (e) {
    assert(e instanceof OpenAI.APIError && e.status === 402, `${e}`);
    assert(/insufficient balance/.test(e.message), e.message);
    return;
  }
  throw new Error("no APIError");
}

const CHECKS = [
  chatStream,
  chatStreamWithUsage,
  chatStreamHelper,
  responsesStream,
  responsesCreateStreamTrue,
  badKeyIsAuthenticationError,
  noMoneyIs402BeforeTheStream,
];

let passed = 0;
let failed = 0;
for (const check of CHECKS) {
  try {
    await check();
    passed += 1;
    console.log(`ok   ${check.name}`);
  } catch (e) {
    failed += 1;
    console.log(`FAIL ${check.name}\n${e?.stack ?? e}`);
  }
}
console.log(`openai-node ${VERSION}: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
