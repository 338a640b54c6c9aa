// The registration page: two images in, the one-graph registration on onnxruntime-web
// (WebAssembly, threaded when the page is cross-origin isolated), checkerboard, blend and the
// numbers out. Everything is served by serve.py from this checkout; nothing leaves the browser.
//
// For scripts and tests: window.ophregState is 'loading', 'ready', 'running', 'done' or
// 'error'; window.ophregResult the result object (the JSON `ophreg register` writes) once
// 'done'; window.ophregError the message once 'error'; window.ophregRuntime what ran it;
// window.ophregStages the progress stages shown, in order.

import * as ort from '/ort/ort.wasm.min.mjs';
import {
  UsageError, checkBudget, checkGraph, decodePnm, hex, isNetpbm, onnxMetadata, register,
  resultDocument,
} from '/common/registration.mjs';

const MODEL_URL = '/model.onnx';
const CONTRACT_URL = '/common/contract.json';
const ELAPSED_REFRESH_MS = 250;

const $ = (id) => document.getElementById(id);
const page = { contract: null, session: null, model: null, loadMs: 0 };
window.ophregState = 'loading';
window.ophregStages = [];

/** Notes a stage for scripts; the user sees showProgress's text. */
function stage(name) {
  if (window.ophregStages.at(-1) !== name) window.ophregStages.push(name);
}

function showProgress(text, fraction) {
  $('progress-text').textContent = text;
  $('progress-text').className = '';
  const bar = $('progress');
  // No value: the indeterminate bar, for stages whose length is not known.
  if (fraction === undefined) bar.removeAttribute('value');
  else bar.value = fraction;
  document.querySelector('.progress').classList.toggle('idle', fraction === null);
}

function showError(error) {
  const message = error instanceof UsageError ? error.message
    : `unexpected error: ${error?.message ?? error}`;
  showProgress(message, null);
  $('progress-text').className = 'error';
  window.ophregError = message;
  stage('error');
  window.ophregState = 'error';
}

const megabytes = (bytes) => (bytes / 1e6).toFixed(1);

async function fetchModel() {
  let response;
  try {
    response = await fetch(MODEL_URL);
  } catch (error) {
    throw new UsageError(`${MODEL_URL}: cannot be fetched (${error.message})`);
  }
  if (!response.ok) {
    throw new UsageError(`${MODEL_URL}: the server answered ${response.status}; start it with ` +
                         'python examples/web/serve.py --model GRAPH');
  }
  const total = Number(response.headers.get('Content-Length')) || 0;
  const chunks = [];
  let received = 0;
  const reader = response.body.getReader();
  stage('model-download');
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
    const of = total ? megabytes(total) : '?';
    showProgress(`Loading the model: ${megabytes(received)} of ${of} MB`,
                 total ? received / total : undefined);
  }
  const bytes = new Uint8Array(received);
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.length;
  }
  // serve.py names the graph's file, which the result's "models" reports as the CLI does.
  const disposition = response.headers.get('Content-Disposition') ?? '';
  const file = /filename="([^"]+)"/.exec(disposition)?.[1] ?? MODEL_URL.slice(1);
  return { bytes, file };
}

async function loadModel() {
  const started = performance.now();
  const contractResponse = await fetch(CONTRACT_URL);
  if (!contractResponse.ok) throw new UsageError(`${CONTRACT_URL}: ${contractResponse.status}`);
  page.contract = await contractResponse.json();
  const { bytes, file } = await fetchModel();
  stage('model-preparation');
  showProgress('Preparing the model (compiling WebAssembly, optimising the graph)…');
  const metadata = onnxMetadata(bytes, file);
  const sha256 = hex(await crypto.subtle.digest('SHA-256', bytes));
  ort.env.wasm.wasmPaths = '/ort/';
  // Threads need SharedArrayBuffer, which browsers give only to cross-origin isolated pages
  // (serve.py's headers); elsewhere one thread, without onnxruntime's warning about it.
  // Otherwise onnxruntime's choice, or ?threads=N in the page's address.
  const asked = new URLSearchParams(location.search).get('threads');
  if (asked !== null) {
    const threads = Number(asked);
    if (!Number.isInteger(threads) || threads < 1 || threads > page.contract.max_threads) {
      throw new UsageError(`?threads=${asked}: must be from 1 to ${page.contract.max_threads}`);
    }
    ort.env.wasm.numThreads = threads;
  }
  if (!self.crossOriginIsolated) ort.env.wasm.numThreads = 1;
  // The run on a worker: the page (and its progress bar) stays alive during inference.
  ort.env.wasm.proxy = true;
  let session;
  try {
    session = await ort.InferenceSession.create(bytes, {
      executionProviders: ['wasm'], graphOptimizationLevel: 'all',
    });
  } catch (error) {
    throw new UsageError(`${file}: onnxruntime-web cannot load it (${error.message})`);
  }
  checkGraph(page.contract, metadata, session, file);
  page.session = session;
  page.model = { file, sha256, metadata };
  page.loadMs = performance.now() - started;
  window.ophregRuntime = {
    onnxruntime_web: ort.env.versions?.web ?? null,
    backend: 'wasm',
    threads: ort.env.wasm.numThreads,
    cross_origin_isolated: self.crossOriginIsolated,
    model_load_ms: Math.round(page.loadMs),
  };
  $('runtime').textContent = `onnxruntime-web ${window.ophregRuntime.onnxruntime_web}, ` +
    `WebAssembly on ${ort.env.wasm.numThreads} thread(s) (cross-origin isolated: ` +
    `${self.crossOriginIsolated ? 'yes' : 'no'}); model ${file}, ` +
    `sha256 ${sha256.slice(0, 12)}…, ` +
    `loaded in ${(page.loadMs / 1000).toFixed(1)} s.`;
}

/** A file as the graph takes it: RGBA from the browser's decoder, or PGM/PPM as they are. */
async function decodeFile(file, maxPixels) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  if (isNetpbm(bytes)) return { ...decodePnm(bytes, file.name, maxPixels), label: file.name };
  let bitmap;
  try {
    // No colour-space conversion: the CLI's decoder (OpenCV) ignores embedded profiles too.
    bitmap = await createImageBitmap(new Blob([bytes]), {
      colorSpaceConversion: 'none', premultiplyAlpha: 'none',
    });
  } catch {
    throw new UsageError(`${file.name}: not an image this browser decodes`);
  }
  const { width, height } = bitmap;
  checkBudget(file.name, width, height, maxPixels);
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext('2d', { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  const { data } = context.getImageData(0, 0, width, height);
  return { pixels: new Uint8Array(data.buffer), width, height, channels: 4, label: file.name };
}

/** Opaque RGBA for a canvas from 1, 3 or 4 channels. */
function displayPixels(pixels, channels, count) {
  const rgba = new Uint8ClampedArray(count * 4);
  for (let i = 0; i < count; i += 1) {
    const from = i * channels;
    const to = i * 4;
    rgba[to] = pixels[from];
    rgba[to + 1] = pixels[from + (channels === 1 ? 0 : 1)];
    rgba[to + 2] = pixels[from + (channels === 1 ? 0 : 2)];
    rgba[to + 3] = 255;
  }
  return rgba;
}

function paint(canvasId, width, height, rgba) {
  const canvas = $(canvasId);
  canvas.width = width;
  canvas.height = height;
  canvas.getContext('2d').putImageData(new ImageData(rgba, width, height), 0, 0);
}

/** The same pictures `ophreg register --out-dir` writes: checkerboard and 50/50 blend. */
function paintPictures(fixedRgba, width, height, warped, tiles) {
  const count = width * height;
  const warpedRgba = displayPixels(warped.data, warped.dims[2], count);
  const tile = Math.max(1, Math.ceil(Math.max(width, height) / tiles));
  const checker = new Uint8ClampedArray(count * 4);
  const blend = new Uint8ClampedArray(count * 4);
  for (let y = 0; y < height; y += 1) {
    const rowParity = Math.floor(y / tile) % 2;
    for (let x = 0; x < width; x += 1) {
      const at = (y * width + x) * 4;
      const source = (Math.floor(x / tile) % 2) ^ rowParity ? warpedRgba : fixedRgba;
      for (let c = 0; c < 4; c += 1) {
        checker[at + c] = source[at + c];
        blend[at + c] = (fixedRgba[at + c] + warpedRgba[at + c] + 1) >> 1;
      }
    }
  }
  paint('checkerboard', width, height, checker);
  paint('blend', width, height, blend);
}

const formatNumber = (value) => (Math.abs(value) >= 1e-3 || value === 0
  ? value.toFixed(4) : value.toExponential(3));
const formatRows = (matrix) => matrix.map((row) => row.map(formatNumber).join('  ')).join('\n');

function showNumbers(result) {
  const rows = [
    ['status', result.status + (result.reason ? ` (${result.reason})` : '')],
    ['model', result.transform + (result.model_selection?.why_not_quadratic
      ? `; not the quadratic: ${result.model_selection.why_not_quadratic}` : '')],
    ['inliers / matches', `${result.num_inliers} / ${result.num_matches}`],
    ['keypoints (fixed, moving)', result.num_keypoints.join(', ')],
  ];
  if (result.matrix) rows.push(['matrix (moving → fixed px)', formatRows(result.matrix)]);
  if (result.quadratic) {
    rows.push([`coefficients on ${result.quadratic.terms.join(', ')}`,
               formatRows(result.quadratic.coefficients)]);
  }
  const loo = result.model_selection?.loo_rms_px;
  if (loo) {
    rows.push(['leave-one-out RMS (px)',
               `affine ${loo.affine}, quadratic ${loo.quadratic}`]);
  }
  rows.push(['time (ms)', Object.entries(result.timings_ms)
    .map(([stage, ms]) => `${stage} ${Math.round(ms)}`).join(', ')]);
  const body = $('numbers').tBodies[0];
  body.replaceChildren(...rows.map(([name, value]) => {
    const row = document.createElement('tr');
    const head = document.createElement('th');
    const cell = document.createElement('td');
    head.textContent = name;
    cell.textContent = value;
    row.append(head, cell);
    return row;
  }));
  const ok = result.status === page.contract.status[0];
  $('verdict').textContent = ok ? `Registered (${result.transform})` : `Refused: ${result.reason}`;
  $('verdict').className = ok ? 'ok' : 'failed';
  document.querySelector('.pictures').hidden = !ok;
  $('json').textContent = JSON.stringify(result, null, 2);
  $('result').hidden = false;
}

async function run() {
  const fixedFile = $('fixed').files[0];
  const movingFile = $('moving').files[0];
  if (!page.session || !fixedFile || !movingFile || window.ophregState === 'running') return;
  window.ophregState = 'running';
  window.ophregResult = undefined;
  $('register').disabled = true;
  const started = performance.now();
  let doing = 'Decoding the images';
  const seconds = () => ((performance.now() - started) / 1000).toFixed(1);
  const tick = () => showProgress(`${doing}… ${seconds()} s`);
  const ticker = setInterval(tick, ELAPSED_REFRESH_MS); // the indeterminate bar, seconds running
  try {
    stage('decoding');
    tick();
    const { contract } = page;
    const fixed = await decodeFile(fixedFile, contract.max_pixels);
    const moving = await decodeFile(movingFile, contract.max_pixels);
    const decoded = performance.now();
    // Made before the run: onnxruntime-web's worker takes over the input buffers.
    const fixedRgba = displayPixels(fixed.pixels, fixed.channels, fixed.width * fixed.height);
    stage('registration');
    doing = 'Registering (SuperPoint, LightGlue, RANSAC, warp)';
    const { outputs, milliseconds } = await register(ort, page.session, contract, fixed, moving);
    const result = resultDocument(contract, outputs, {
      fixedSize: [fixed.width, fixed.height],
      movingSize: [moving.width, moving.height],
      timings: { read: decoded - started, graph: milliseconds,
                 total: performance.now() - started },
      models: { [contract.model]: { file: page.model.file, sha256: page.model.sha256 } },
      provider: 'wasm',
      metadata: page.model.metadata,
    });
    clearInterval(ticker);
    if (result.status === contract.status[0]) {
      paintPictures(fixedRgba, fixed.width, fixed.height, outputs[contract.names.warped],
                    contract.checker_tiles);
    }
    showNumbers(result);
    showProgress(`Done in ${(result.timings_ms.total / 1000).toFixed(1)} s.`, null);
    window.ophregResult = result;
    stage('done');
    window.ophregState = 'done';
  } catch (error) {
    clearInterval(ticker);
    showError(error);
  } finally {
    $('register').disabled = false;
  }
}

function wireInputs() {
  for (const role of ['fixed', 'moving']) {
    const input = $(role);
    const zone = $(`${role}-drop`);
    input.addEventListener('change', () => {
      $(`${role}-name`).textContent = input.files[0]?.name ?? '';
      run();
    });
    zone.addEventListener('dragover', (event) => {
      event.preventDefault();
      zone.classList.add('over');
    });
    zone.addEventListener('dragleave', () => zone.classList.remove('over'));
    zone.addEventListener('drop', (event) => {
      event.preventDefault();
      zone.classList.remove('over');
      if (!event.dataTransfer.files.length) return;
      input.files = event.dataTransfer.files;
      input.dispatchEvent(new Event('change'));
    });
  }
  $('register').addEventListener('click', run);
}

wireInputs();
try {
  await loadModel();
  $('register').disabled = false;
  stage('ready');
  window.ophregState = 'ready';
  showProgress('Ready: choose or drop the two images.', null);
  run(); // images chosen while the model loaded
} catch (error) {
  showError(error);
}
