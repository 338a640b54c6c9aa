#!/usr/bin/env node
// Register MOVING onto FIXED with the one-graph registration on onnxruntime-node.
//
//   node examples/node/register.mjs FIXED MOVING [--out DIR] [--json PATH] [--model GRAPH]
//                                   [--threads N] [--force]
//
// Writes DIR/warped.png (the moving image in the fixed frame) and the JSON object
// `ophreg register` writes (stdout, or --json PATH). Exit codes as `ophreg register`: 0
// registered, 3 refused, 2 bad input or usage with one line on stderr naming the file.

import { createHash } from 'node:crypto';
import { promises as fs, constants as fsConstants } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import {
  UsageError, checkBudget, checkGraph, decodePnm, isNetpbm, onnxMetadata, register, resultDocument,
  stretchToUint8,
} from '../common/registration.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const CONTRACT_FILE = path.join(HERE, '..', 'common', 'contract.json');
const DEFAULT_MODEL = path.join(HERE, '..', '..', 'models', 'registration.onnx');
const WARPED_FILE = 'warped.png';
const PROGRAM = 'register.mjs';

const EXIT_OK = 0;
const EXIT_INTERNAL = 1;
const EXIT_USAGE = 2;
const EXIT_FAILED = 3;

const USAGE = `usage: node examples/node/register.mjs FIXED MOVING [--out DIR] [--json PATH]
                                    [--model GRAPH] [--threads N] [--force]

Register MOVING onto FIXED with the one-graph registration (onnxruntime-node, CPU).

  FIXED          the target image (its frame is kept)
  MOVING         the source image (warped into FIXED's frame)
  --out DIR      write DIR/${WARPED_FILE} (the moving image in the fixed frame)
  --json PATH    write the result object there (default: print it on stdout)
  --model GRAPH  the registration graph (default: models/registration.onnx of this checkout;
                 make it with: python -m export registration --out models/registration.onnx)
  --threads N    onnxruntime intra-op threads (default: onnxruntime's choice)
  --force        overwrite existing output files

Images: JPEG, PNG and TIFF of 8 or 16 bits (decoded by sharp; 16 bits are stretched to 8 as
ophreg register stretches them), binary PGM/PPM of 8 bits.

exit codes:
  0  registered
  2  bad input or usage: one line on stderr names the file and the problem
  3  registration refused (too few inliers, implausible transform)`;

// sharp's names of the formats `ophreg register` also reads; anything else it would decode
// (WebP, GIF, AVIF, SVG) is refused so that both commands accept the same files.
const SHARP_FORMATS = new Set(['jpeg', 'png', 'tiff']);

function parseCommandLine(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        out: { type: 'string' },
        json: { type: 'string' },
        model: { type: 'string' },
        threads: { type: 'string' },
        force: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (error) {
    throw new UsageError(error.message);
  }
  const { values, positionals } = parsed;
  if (values.help) return { help: true };
  if (positionals.length !== 2) {
    throw new UsageError(`expected FIXED and MOVING, got ${positionals.length} path(s)`);
  }
  return {
    fixed: positionals[0],
    moving: positionals[1],
    out: values.out,
    json: values.json,
    model: values.model ?? DEFAULT_MODEL,
    threads: values.threads,
    force: values.force,
  };
}

async function exists(file) {
  try {
    await fs.lstat(file);
    return true;
  } catch {
    return false;
  }
}

/** The Python CLI's rule: refuse before any work an output that could not be written. */
async function checkWritable(files, force) {
  for (const file of files) {
    const stat = await fs.stat(file).catch(() => null);
    if (stat?.isDirectory()) throw new UsageError(`${file}: is a folder, not a file`);
    if (stat && !force) throw new UsageError(`${file}: already exists (use --force to overwrite)`);
    let ancestor = path.dirname(path.resolve(file));
    while (!(await exists(ancestor)) && ancestor !== path.dirname(ancestor)) {
      ancestor = path.dirname(ancestor);
    }
    const folder = await fs.stat(ancestor).catch(() => null);
    if (!folder?.isDirectory()) throw new UsageError(`${file}: ${ancestor} is not a folder`);
    try {
      await fs.access(ancestor, fsConstants.W_OK | fsConstants.X_OK);
    } catch {
      throw new UsageError(`${file}: ${ancestor} is not writable`);
    }
  }
}

async function readInput(file) {
  let stat;
  try {
    stat = await fs.stat(file);
  } catch {
    throw new UsageError(`${file}: no such file`);
  }
  if (!stat.isFile()) throw new UsageError(`${file}: not a file`);
  if (stat.size === 0) throw new UsageError(`${file}: the file is empty`);
  try {
    return await fs.readFile(file);
  } catch (error) {
    throw new UsageError(`${file}: cannot be read (${error.code ?? error.message})`);
  }
}

/** Formats `ophreg register` reads and sharp does not, named in the refusal. */
function unreadFormat(bytes) {
  if (bytes[0] === 0x42 && bytes[1] === 0x4d) return 'BMP';
  if (bytes.length > 132 && bytes.subarray(128, 132).toString('latin1') === 'DICM') return 'DICOM';
  return null;
}

async function decodeImage(sharp, file, maxPixels) {
  const bytes = await readInput(file);
  if (isNetpbm(bytes)) {
    return { ...decodePnm(bytes, file, maxPixels), label: file };
  }
  const known = unreadFormat(bytes);
  if (known) {
    throw new UsageError(`${file}: ${known} is not read by this example (JPEG, PNG, TIFF, ` +
                         'binary PGM/PPM are; ophreg register reads it)');
  }
  // ignoreIcc: OpenCV, which decodes for `ophreg register`, ignores embedded colour profiles;
  // converting through them would give the graph other pixels than the Python side sees.
  // limitInputPixels off: the contract's max_pixels is checked from the header instead.
  const options = { ignoreIcc: true, limitInputPixels: false, failOn: 'warning' };
  let header;
  try {
    header = await sharp(bytes, options).metadata();
  } catch {
    throw new UsageError(`${file}: not an image this example reads (JPEG, PNG, TIFF, ` +
                         'binary PGM/PPM)');
  }
  if (!SHARP_FORMATS.has(header.format)) {
    throw new UsageError(`${file}: ${header.format.toUpperCase()} is not read by this example ` +
                         '(JPEG, PNG, TIFF, binary PGM/PPM are)');
  }
  checkBudget(file, header.width, header.height, maxPixels);
  const deep = header.depth === 'ushort';
  if (!deep && header.depth !== 'uchar') {
    throw new UsageError(`${file}: ${header.depth} samples; 8- and 16-bit images are read`);
  }
  // sharp would widen grey to RGB; OpenCV keeps one channel (and makes grey with alpha RGBA,
  // as sharp does), and the warped image keeps the moving image's channels in both.
  const grey = header.channels === 1;
  const space = deep ? (grey ? 'grey16' : 'rgb16') : (grey ? 'b-w' : 'srgb');
  let decoded;
  try {
    decoded = await sharp(bytes, options).toColourspace(space)
      .raw({ depth: deep ? 'ushort' : 'uchar' }).toBuffer({ resolveWithObject: true });
  } catch (error) {
    throw new UsageError(`${file}: cannot be decoded (${error.message.split('\n')[0]})`);
  }
  const { width, height, channels } = decoded.info;
  const data = new Uint8Array(decoded.data); // a copy: aligned, and the graph's own
  // The graph takes 8 bits: 16-bit samples are stretched as the Python side stretches them.
  const pixels = deep ? stretchToUint8(new Uint16Array(data.buffer)) : data;
  return { pixels, width, height, channels, label: file };
}

async function loadSession(ort, file, threads, contract) {
  let bytes;
  try {
    bytes = await fs.readFile(file);
  } catch (error) {
    const hint = file === DEFAULT_MODEL
      ? ' (export it: python -m export registration --out models/registration.onnx, or name ' +
        'a graph with --model)'
      : '';
    throw new UsageError(`${file}: cannot be read (${error.code ?? error.message})${hint}`);
  }
  const metadata = onnxMetadata(bytes, file);
  const options = { executionProviders: ['cpu'], graphOptimizationLevel: 'all' };
  if (threads !== undefined) options.intraOpNumThreads = threads;
  let session;
  try {
    session = await ort.InferenceSession.create(bytes, options);
  } catch (error) {
    throw new UsageError(`${file}: onnxruntime cannot load it (${error.message.split('\n')[0]})`);
  }
  checkGraph(contract, metadata, session, file);
  const sha256 = createHash('sha256').update(bytes).digest('hex');
  return { session, metadata, sha256 };
}

/** Every file whole or not at all, as `ophreg register` writes: a temporary name, then rename. */
async function writeFiles(contents) {
  const temporary = [];
  try {
    for (const [file, data] of contents) {
      await fs.mkdir(path.dirname(path.resolve(file)), { recursive: true });
      const partial = `${file}.${process.pid}.partial`;
      temporary.push(partial);
      await fs.writeFile(partial, data);
    }
    for (const [index, [file]] of contents.entries()) await fs.rename(temporary[index], file);
  } catch (error) {
    await Promise.all(temporary.map((file) => fs.rm(file, { force: true })));
    throw new UsageError(`${error.path ?? 'output'}: cannot be written ` +
                         `(${error.code ?? error.message})`);
  }
}

/** Loaded after the usage checks, so that a usage error needs no native module. */
async function nativeModules() {
  try {
    const [sharpModule, ortModule] = await Promise.all([import('sharp'),
                                                        import('onnxruntime-node')]);
    return { sharp: sharpModule.default, ort: ortModule.default ?? ortModule };
  } catch (error) {
    throw new UsageError(`${error.message.split('\n')[0]}; install the example's packages: ` +
                         `npm ci --prefix ${path.relative(process.cwd(), HERE) || '.'}`);
  }
}

async function main(argv) {
  const args = parseCommandLine(argv);
  if (args.help) {
    console.log(USAGE);
    return EXIT_OK;
  }
  const warpedFile = args.out === undefined ? null : path.join(args.out, WARPED_FILE);
  const contract = JSON.parse(await fs.readFile(CONTRACT_FILE, 'utf8'));
  const threads = args.threads === undefined ? undefined : Number(args.threads);
  if (threads !== undefined &&
      !(Number.isInteger(threads) && threads >= 1 && threads <= contract.max_threads)) {
    throw new UsageError(`--threads ${args.threads}: must be from 1 to ${contract.max_threads}`);
  }
  const targets = [warpedFile, args.json].filter((file) => file != null);
  await checkWritable(targets, args.force);
  const started = performance.now();
  const { sharp, ort } = await nativeModules();
  const fixed = await decodeImage(sharp, args.fixed, contract.max_pixels);
  const moving = await decodeImage(sharp, args.moving, contract.max_pixels);
  const decoded = performance.now();
  const model = await loadSession(ort, args.model, threads, contract);
  const loaded = performance.now();
  const { outputs, milliseconds } = await register(ort, model.session, contract,
                                                   fixed, moving);
  const document = resultDocument(contract, outputs, {
    fixedSize: [fixed.width, fixed.height],
    movingSize: [moving.width, moving.height],
    // one_graph.py's stages (read, graph, total), and the graph's load, which it does once.
    timings: { read: decoded - started, load: loaded - decoded, graph: milliseconds,
               total: performance.now() - started },
    models: { [contract.model]: { file: path.basename(args.model), sha256: model.sha256 } },
    provider: 'CPUExecutionProvider',
    metadata: model.metadata,
  });
  const ok = document.status === contract.status[0];
  const files = [];
  if (warpedFile && ok) {
    const warped = outputs[contract.names.warped];
    const [height, width, channels] = warped.dims;
    let picture = sharp(warped.data, { raw: { width, height, channels } });
    // sharp writes colour unless told: a grey moving image gives a grey warped.png, as in Python.
    if (channels === 1) picture = picture.toColourspace('b-w');
    const png = await picture.png().toBuffer();
    files.push([warpedFile, png]);
  }
  const text = `${JSON.stringify(document, null, 2)}\n`;
  if (args.json) files.push([args.json, text]);
  await writeFiles(files);
  if (warpedFile && !ok) {
    // Only there with --force: an earlier run's warp must not pass for this refusal's.
    await fs.rm(warpedFile, { force: true });
  }
  if (!args.json) process.stdout.write(text);
  let summary = `${document.status}: ${document.num_inliers}/${document.num_matches} inliers, ` +
    `keypoints ${document.num_keypoints.join('/')}, ${milliseconds.toFixed(0)} ms ` +
    `(onnxruntime-node ${ort.env.versions.node}, ${document.transform})`;
  if (!ok) summary += ` (${document.reason})`;
  console.error(summary);
  return ok ? EXIT_OK : EXIT_FAILED;
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (error) {
  if (error instanceof UsageError) {
    console.error(`${PROGRAM}: error: ${error.message}`);
    process.exitCode = EXIT_USAGE;
  } else {
    // Not the user's mistake: still one line, with where to look.
    console.error(`${PROGRAM}: internal error: ${error?.message ?? error} (please report it ` +
                  'with the command line)');
    process.exitCode = EXIT_INTERNAL;
  }
}
