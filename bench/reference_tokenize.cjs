// js-tiktoken reference for bench/text: GPT-2 encoding throughput over the same ~4 KB line-aligned chunks
// that graft_text_bench encodes. js-tiktoken is installed by bench/text into a cache folder and found here
// through --prefix (the folder `npm install --prefix` filled).
//
//   node reference_tokenize.cjs --prefix DIR FILE [--repeat N] [--chunk BYTES] [--dump-ids PATH]
// Prints one JSON line; the first pass (JIT still warming up) is reported apart, mb_per_s is the median
// of the N passes after it. MB = 1e6 bytes of the file.
"use strict";
const fs = require("fs");
const path = require("path");
const { createRequire } = require("module");

function parseArgs(argv) {
  const args = { repeat: 5, chunk: 4096, positional: [] };
  for (let i = 0; i < argv.length; i++) {
    const word = argv[i];
    if (!word.startsWith("--")) {
      args.positional.push(word);
      continue;
    }
    const value = argv[++i];
    if (value === undefined) throw new Error(`${word} needs a value`);
    if (word === "--prefix") args.prefix = value;
    else if (word === "--repeat") args.repeat = Math.max(1, parseInt(value, 10));
    else if (word === "--chunk") args.chunk = parseInt(value, 10);
    else if (word === "--dump-ids") args.dumpIds = value;
    else throw new Error(`unknown option ${word}`);
  }
  if (!args.prefix || args.positional.length !== 1) {
    throw new Error("usage: reference_tokenize.cjs --prefix DIR FILE [--repeat N] [--chunk BYTES] [--dump-ids PATH]");
  }
  return args;
}

// Chunks of at least `size` bytes, each ending just after a '\n'; split on bytes, then decoded, so the
// chunks are the same as graft's whatever the text holds.
function splitChunks(data, size) {
  const chunks = [];
  for (let pos = 0; pos < data.length; ) {
    let end = data.length;
    if (pos + size < data.length) {
      const newline = data.indexOf(0x0a, pos + size);
      if (newline >= 0) end = newline + 1;
    }
    chunks.push(data.subarray(pos, end).toString("utf8"));
    pos = end;
  }
  return chunks;
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const requireFromPrefix = createRequire(path.join(path.resolve(args.prefix), "node_modules", "_.js"));
  const { getEncoding } = requireFromPrefix("js-tiktoken");
  const packageJson = path.join(path.resolve(args.prefix), "node_modules", "js-tiktoken", "package.json");
  const version = JSON.parse(fs.readFileSync(packageJson, "utf8")).version;
  const data = fs.readFileSync(args.positional[0]);
  const chunks = splitChunks(data, args.chunk);

  let start = process.hrtime.bigint();
  const encoding = getEncoding("gpt2");
  const loadSeconds = Number(process.hrtime.bigint() - start) / 1e9;

  const onePass = (keep) => {
    const ids = [];
    let tokens = 0;
    const begin = process.hrtime.bigint();
    for (const chunk of chunks) {
      const out = encoding.encode(chunk);
      tokens += out.length;
      if (keep) for (const id of out) ids.push(id);
    }
    return { seconds: Number(process.hrtime.bigint() - begin) / 1e9, tokens, ids };
  };
  const first = onePass(true);
  const passes = [];
  for (let i = 0; i < args.repeat; i++) passes.push(onePass(false).seconds);
  passes.sort((a, b) => a - b);
  const mid = passes.length >> 1;
  const median = passes.length % 2 ? passes[mid] : (passes[mid - 1] + passes[mid]) / 2;
  if (args.dumpIds) fs.writeFileSync(args.dumpIds, first.ids.map((id) => `${id}\n`).join(""));
  const mb = data.length / 1e6;
  console.log(JSON.stringify({
    bytes: data.length, chunks: chunks.length, tokens: first.tokens, load_s: loadSeconds,
    first_pass_s: first.seconds, first_mb_per_s: mb / first.seconds, median_s: median,
    mb_per_s: mb / median, repeat: args.repeat, version, node: process.version,
  }));
}

try {
  main();
} catch (error) {
  console.error(`reference_tokenize.cjs: ${error.message}`);
  process.exit(1);
}
