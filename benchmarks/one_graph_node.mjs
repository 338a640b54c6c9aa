// Times the registration graph in onnxruntime-node with the session kept, as an embedding
// keeps it (examples/node/register.mjs loads the graph for each pair, as a command must).
// Run by benchmarks/one_graph_latency.py, which compares it with the other ways to register.
//
//   node benchmarks/one_graph_node.mjs --model GRAPH --fixed PNM --moving PNM
//        [--threads N] [--warmup 1] [--repeat 3]
//
// Images are binary PGM/PPM (the caller writes OpenCV's decoding of the dev files, so every
// way gets the same pixels). Prints one JSON object: load_ms, graph_ms (one per timed run),
// status and the onnxruntime-node version.

import { promises as fs } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { checkGraph, decodePnm, onnxMetadata, register } from '../examples/common/registration.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const NODE_EXAMPLE = path.join(HERE, '..', 'examples', 'node');
const contract = JSON.parse(
  await fs.readFile(path.join(HERE, '..', 'examples', 'common', 'contract.json'), 'utf8'));
// onnxruntime-node is the Node example's dependency, installed there (npm ci --prefix).
const ort = createRequire(path.join(NODE_EXAMPLE, 'package.json'))('onnxruntime-node');

const { values: args } = parseArgs({
  options: {
    model: { type: 'string' },
    fixed: { type: 'string' },
    moving: { type: 'string' },
    threads: { type: 'string' },
    warmup: { type: 'string', default: '1' },
    repeat: { type: 'string', default: '3' },
  },
});

const image = async (file) => ({
  ...decodePnm(new Uint8Array(await fs.readFile(file)), file, contract.max_pixels),
  label: file,
});
const fixed = await image(args.fixed);
const moving = await image(args.moving);

const started = performance.now();
const bytes = await fs.readFile(args.model);
const options = { executionProviders: ['cpu'], graphOptimizationLevel: 'all' };
if (args.threads !== undefined) options.intraOpNumThreads = Number(args.threads);
const session = await ort.InferenceSession.create(bytes, options);
checkGraph(contract, onnxMetadata(bytes, args.model), session, args.model);
const loadMs = performance.now() - started;

const graphMs = [];
let status = null;
for (let i = 0; i < Number(args.warmup) + Number(args.repeat); i += 1) {
  const { outputs, milliseconds } = await register(ort, session, contract, fixed, moving);
  status = contract.status[Number(outputs[contract.names.status].data[0])];
  if (i >= Number(args.warmup)) graphMs.push(milliseconds);
}
process.stdout.write(`${JSON.stringify({
  onnxruntime_node: ort.env.versions.node, load_ms: loadMs, graph_ms: graphMs, status,
})}\n`);
