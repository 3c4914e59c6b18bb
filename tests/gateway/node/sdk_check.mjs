// The official Node SDK (`openai` 7.x from npm) against a gateway: prints one JSON line of what
// it got. Usage: node sdk_check.mjs <base_url> <api_key> <model>  (NODE_PATH: the SDK's dir).
import OpenAI from "openai";

const [baseURL, apiKey, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const hello = [{ role: "user", content: "hello there" }];
const weather = {
  type: "function",
  name: "get_weather",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
};

const out = {};
const two = await client.chat.completions.create({ model, messages: hello, max_tokens: 3, n: 2, logprobs: true, top_logprobs: 2 });
out.n = two.choices.length;
out.logprobs = two.choices[0].logprobs.content.length;
out.chatUsage = two.usage.completion_tokens;
const tool = await client.chat.completions.create({
  model, messages: hello, max_tokens: 8, tools: [{ type: "function", function: { name: weather.name, parameters: weather.parameters } }],
});
out.toolName = tool.choices[0].message.tool_calls[0].function.name;
const resp = await client.responses.create({ model, input: "hello there", max_output_tokens: 4 });
out.responseText = resp.output_text;
out.responseUsage = resp.usage.output_tokens;
const stream = client.responses.stream({ model, input: "hello there", max_output_tokens: 4 });
let deltas = "";
for await (const event of stream) if (event.type === "response.output_text.delta") deltas += event.delta;
out.streamText = deltas;
out.streamFinal = (await stream.finalResponse()).output_text;
const call = await client.responses.create({ model, input: "weather?", tools: [weather], max_output_tokens: 8 });
const fc = call.output.find((i) => i.type === "function_call");
const after = await client.responses.create({
  model,
  input: [
    { role: "user", content: "weather?" },
    { type: "function_call", call_id: fc.call_id, name: fc.name, arguments: fc.arguments },
    { type: "function_call_output", call_id: fc.call_id, output: "sunny" },
  ],
  tools: [weather],
  max_output_tokens: 3,
});
out.roundTrip = after.output_text;
console.log(JSON.stringify(out));
