// Pay a streamed completion through meterkit with mppx's `sessionLegacyManager` (the Tempo
// v1 session client, mppx@0.11.0 from npm), on a local chain. The channel was opened with
// ordinary transactions by the test; the request names it (`Payment-Channel-Id`), so the
// 402's challenge carries `methodDetails.channelId` and mppx recovers the channel from
// `getChannel` instead of opening one (its open is a Tempo-only transaction type).
//
//   node tests/support/mppx_session.mjs NODE_MODULES '{"rpcUrl":…,"chainId":…,"escrow":…,
//     "url":…,"payerKey":…,"channelId":…,"maxDeposit":"1","headers":{…},"body":{…}}'
//
// Prints one JSON line: the text deltas read, the receipts seen, how many vouchers were
// POSTed mid-stream (one per `payment-need-voucher`), the close receipt.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modules, raw] = process.argv.slice(2);
const input = JSON.parse(raw);

// Import a package's ESM entry from NODE_MODULES (the project keeps them in .chain/).
async function load(pkg, sub = ".") {
  const manifest = JSON.parse(readFileSync(join(modules, pkg, "package.json"), "utf8"));
  let entry = manifest.exports[sub];
  if (typeof entry !== "string") entry = entry.import ?? entry.default;
  if (typeof entry !== "string") entry = entry.default;
  return import(pathToFileURL(join(modules, pkg, entry)).href);
}

const viem = await load("viem");
const { privateKeyToAccount } = await load("viem", "./accounts");
const { sessionLegacyManager } = await load("mppx", "./client");

const chain = viem.defineChain({
  id: input.chainId,
  name: "anvil",
  nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
  rpcUrls: { default: { http: [input.rpcUrl] } },
});
const account = privateKeyToAccount(input.payerKey);
const client = viem.createWalletClient({ account, chain, transport: viem.http(input.rpcUrl) });

// Count the management POSTs (no body: vouchers, then the close) mppx sends.
let management = 0;
const fetch = (url, init) => {
  if (init?.method === "POST" && init.body === undefined) management += 1;
  return globalThis.fetch(url, init);
};
const manager = sessionLegacyManager({
  fetch,
  account,
  client,
  escrowContract: input.escrow,
  maxDeposit: input.maxDeposit,
  decimals: 6,
});

const receipts = [];
const deltas = [];
const stream = await manager.sse(input.url, {
  method: "POST",
  headers: {
    "Content-Type": "application/json",
    "Payment-Channel-Id": input.channelId,
    ...(input.headers ?? {}),
  },
  body: JSON.stringify(input.body),
  onReceipt: (r) => receipts.push(r),
});
for await (const data of stream) {
  if (data.trim() === "[DONE]") continue;
  const chunk = JSON.parse(data);
  for (const c of chunk.choices ?? []) {
    if (c.delta?.content) deltas.push(c.delta.content);
  }
}
const cumulative = manager.cumulative.toString();
const voucherPosts = management;
const close = await manager.close();
console.log(
  JSON.stringify({ deltas, receipts, close, cumulative, voucherPosts, channelId: manager.channelId }),
);
