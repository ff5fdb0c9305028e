// Compile meterkit's contracts with solc-js (the compiler embedded in the npm package: works
// offline, byte-identical to a native build) and write one artifact per contract.
//
//   node contracts/build.mjs [NODE_MODULES] [OUT_DIR]
//
// NODE_MODULES holds `solc` and `@openzeppelin/contracts` (default: .chain/node_modules, which
// `make chain` installs); OUT_DIR defaults to python/meterkit/chain/artifacts, where the package
// loads them from (the demo and the benchmark deploy them). A test recompiles and compares.
import { createRequire } from "node:module";
import { readFileSync, writeFileSync, readdirSync, mkdirSync } from "node:fs";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const modules = resolve(process.argv[2] ?? join(here, "..", ".chain", "node_modules"));
const outDir = resolve(process.argv[3] ?? join(here, "..", "python", "meterkit", "chain", "artifacts"));
const require = createRequire(join(modules, "noop.js"));
const solc = require("solc");

const sources = {};
for (const f of readdirSync(here).filter((f) => f.endsWith(".sol")).sort()) {
  sources[f] = { content: readFileSync(join(here, f), "utf8") };
}
const settings = {
  // OpenZeppelin 5 uses `mcopy`: Cancun.
  evmVersion: "cancun",
  optimizer: { enabled: true, runs: 200 },
  // No metadata hash: the bytecode then depends on the source text alone, not on file paths.
  metadata: { bytecodeHash: "none", appendCBOR: false },
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};
const input = { language: "Solidity", sources, settings };
const findImports = (path) => {
  try {
    return { contents: readFileSync(join(modules, path), "utf8") };
  } catch (e) {
    return { error: `not found: ${path}` };
  }
};
const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
const errors = (output.errors ?? []).filter((e) => e.severity === "error");
for (const e of output.errors ?? []) console.error(e.formattedMessage);
if (errors.length) process.exit(1);

mkdirSync(outDir, { recursive: true });
for (const file of Object.keys(sources)) {
  for (const [name, c] of Object.entries(output.contracts[file])) {
    const artifact = {
      contractName: name,
      sourceName: `contracts/${file}`,
      compiler: { version: solc.version(), settings: { evmVersion: settings.evmVersion, optimizer: settings.optimizer } },
      abi: c.abi,
      bytecode: "0x" + c.evm.bytecode.object,
      deployedBytecode: "0x" + c.evm.deployedBytecode.object,
    };
    writeFileSync(join(outDir, `${name}.json`), JSON.stringify(artifact, null, 2) + "\n");
    console.error(`wrote ${join(outDir, name + ".json")}`);
  }
}
