// Compiles contracts/src/*.sol (and the test-only contracts/test/*.sol) with the pinned solcjs and fixed settings, and writes one
// artifact per contract to the folder given as argv[3]: { contractName, abi, bytecode,
// deployedBytecode, compiler }. Usage: node contracts/build.cjs SOLC_MODULE_DIR OUT_DIR
"use strict";
const fs = require("fs");
const path = require("path");

const [solcDir, outDir] = process.argv.slice(2);
if (!solcDir || !outDir) {
  console.error("usage: node contracts/build.cjs SOLC_MODULE_DIR OUT_DIR");
  process.exit(2);
}
const solc = require(path.resolve(solcDir));
const settings = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "cancun",
  viaIR: false,
  metadata: { bytecodeHash: "ipfs" },
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};
const sources = {};
// contracts/src: what is deployed; contracts/test: hostile contracts for tests only (artifacts
// under out/test).
for (const dir of ["src", "test"]) {
  const abs = path.join(__dirname, dir);
  if (!fs.existsSync(abs)) continue;
  for (const f of fs.readdirSync(abs).filter((f) => f.endsWith(".sol")).sort()) {
    // Unix line endings whatever the checkout, so the metadata hash is the same everywhere.
    sources[`${dir}/${f}`] = { content: fs.readFileSync(path.join(abs, f), "utf8").replace(/\r\n/g, "\n") };
  }
}
const out = JSON.parse(solc.compile(JSON.stringify({ language: "Solidity", sources, settings })));
let failed = false;
for (const e of out.errors || []) {
  console.error(e.formattedMessage || e.message);
  if (e.severity === "error") failed = true;
}
if (failed) process.exit(1);
fs.mkdirSync(outDir, { recursive: true });
for (const [file, contracts] of Object.entries(out.contracts)) {
  for (const [name, c] of Object.entries(contracts)) {
    if (!c.evm.bytecode.object) continue; // interfaces
    const artifact = {
      contractName: name,
      sourceName: file,
      abi: c.abi,
      bytecode: "0x" + c.evm.bytecode.object,
      deployedBytecode: "0x" + c.evm.deployedBytecode.object,
      compiler: { version: solc.version(), settings: { optimizer: settings.optimizer, evmVersion: settings.evmVersion } },
    };
    const dir = file.startsWith("test/") ? path.join(outDir, "test") : outDir;
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, `${name}.json`), JSON.stringify(artifact, null, 2) + "\n");
    console.log(`${name}: ${(c.evm.deployedBytecode.object.length / 2) | 0} bytes deployed`);
  }
}
