// The one-graph registration for JavaScript: what the Node command and the web page share.
//
// Plain ECMAScript with no Node or browser API, so both import this very file: the check that a
// graph is the registration graph, the run, and the turning of its output codes into the JSON
// object `ophreg register` writes. Names and codes come from contract.json, generated from
// ophreg_rt/contract.py (examples/common/contract_json.py), never typed here.

/** A problem the user can fix (wrong graph, unusable image): one line, no stack trace. */
export class UsageError extends Error {
  constructor(message) {
    super(message);
    this.name = 'UsageError';
  }
}

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_LENGTH = 2;
const WIRE_FIXED32 = 5;
// onnx.proto: ModelProto.metadata_props = 14 (StringStringEntryProto: key = 1, value = 2).
const MODEL_METADATA_FIELD = 14;
const ENTRY_KEY_FIELD = 1;
const ENTRY_VALUE_FIELD = 2;

function* protobufFields(bytes, source) {
  let at = 0;
  const varint = () => {
    // Numbers, not bitwise ops: lengths of large graphs pass 2**31.
    let value = 0;
    for (let scale = 1; ; scale *= 128) {
      if (at >= bytes.length) throw new UsageError(`${source}: not an ONNX model (truncated)`);
      const byte = bytes[at++];
      value += (byte & 0x7f) * scale;
      if (byte < 0x80) return value;
      if (scale > 2 ** 56) throw new UsageError(`${source}: not an ONNX model (bad varint)`);
    }
  };
  while (at < bytes.length) {
    const tag = varint();
    const field = Math.floor(tag / 8);
    const wire = tag % 8;
    if (wire === WIRE_VARINT) {
      varint();
    } else if (wire === WIRE_FIXED64 || wire === WIRE_FIXED32) {
      at += wire === WIRE_FIXED64 ? 8 : 4;
    } else if (wire === WIRE_LENGTH) {
      const length = varint();
      if (at + length > bytes.length) {
        throw new UsageError(`${source}: not an ONNX model (a field runs past the end)`);
      }
      yield [field, bytes.subarray(at, at + length)];
      at += length;
    } else {
      throw new UsageError(`${source}: not an ONNX model (wire type ${wire})`);
    }
  }
}

/**
 * The model's metadata_props (`ophreg.*` export settings) as a plain object. onnxruntime's
 * JavaScript API does not expose them, so the top level of the ModelProto is walked here; the
 * graph itself is skipped by its length, never parsed.
 */
export function onnxMetadata(bytes, source = 'model') {
  const decoder = new TextDecoder();
  const metadata = {};
  for (const [field, body] of protobufFields(bytes, source)) {
    if (field !== MODEL_METADATA_FIELD) continue;
    let key = '';
    let value = '';
    for (const [entryField, text] of protobufFields(body, source)) {
      if (entryField === ENTRY_KEY_FIELD) key = decoder.decode(text);
      if (entryField === ENTRY_VALUE_FIELD) value = decoder.decode(text);
    }
    metadata[key] = value;
  }
  return metadata;
}

/** Refuses a graph that is not the registration graph of this contract, as the runtime does. */
export function checkGraph(contract, metadata, session, source) {
  const prefix = contract.metadata_prefix;
  const model = metadata[prefix + contract.metadata_keys.model];
  const version = metadata[prefix + contract.metadata_keys.contract_version];
  if (!Object.keys(metadata).some((key) => key.startsWith(prefix))) {
    throw new UsageError(`${source}: no '${prefix}*' metadata; expected a graph exported by ` +
                         `'python -m export ${contract.model}'`);
  }
  if (model !== contract.model) {
    throw new UsageError(`${source}: expected a ${contract.model} graph, found model=${model}`);
  }
  if (version !== contract.contract_version) {
    throw new UsageError(`${source}: expected contract version ${contract.contract_version}, ` +
                         `found ${version}; re-export the graph with this version of export/`);
  }
  const missing = [
    ...contract.inputs.filter((spec) => !session.inputNames.includes(spec.name)),
    ...contract.outputs.filter((spec) => !session.outputNames.includes(spec.name)),
  ].map((spec) => spec.name);
  if (missing.length) {
    throw new UsageError(`${source}: the graph lacks ${missing.join(', ')}`);
  }
}

/**
 * An image as the graph takes it. `pixels` are rows x columns x channels, uint8, channels 1
 * (grey), 3 (RGB) or 4 (RGBA); `label` names it in messages.
 */
export function imageTensor(ort, { pixels, width, height, channels }, label) {
  if (![1, 3, 4].includes(channels)) {
    throw new UsageError(`${label}: ${channels} channels; the graph takes 1 (grey), 3 (RGB) ` +
                         'or 4 (RGBA)');
  }
  // As the Python wrapper: the graph's warp cannot take an empty moving image, so an image
  // without pixels is refused here, before the graph.
  if (!(width >= 1 && height >= 1)) {
    throw new UsageError(`${label}: the image has no pixels (${width}x${height})`);
  }
  if (!(pixels instanceof Uint8Array) || pixels.length !== width * height * channels) {
    throw new UsageError(`${label}: expected ${width}x${height}x${channels} bytes of pixels`);
  }
  return new ort.Tensor('uint8', pixels, [height, width, channels]);
}

/** Runs the graph on two images (see imageTensor); returns its outputs and the time it took. */
export async function register(ort, session, contract, fixed, moving) {
  const [fixedName, movingName] = contract.names.images;
  const feeds = {
    [fixedName]: imageTensor(ort, fixed, fixed.label ?? fixedName),
    [movingName]: imageTensor(ort, moving, moving.label ?? movingName),
  };
  const started = performance.now();
  const outputs = await session.run(feeds);
  return { outputs, milliseconds: performance.now() - started };
}

/** Refuses an image over the runtime's limit (contract.max_pixels), as `ophreg register` does. */
export function checkBudget(label, width, height, maxPixels) {
  if (width * height > maxPixels) {
    throw new UsageError(`${label}: ${width}x${height} px (${(width * height / 1e6).toFixed(1)} ` +
                         `megapixels) is over the limit of ${maxPixels / 1e6} megapixels`);
  }
}

// imageio.stretch_to_uint8's range: the 0.1 and 99.9 percentiles of all samples.
const STRETCH_PERCENTILES = [0.1, 99.9];
const UINT16_VALUES = 65536;

/**
 * numpy.percentile (method 'linear') of 16-bit samples, exactly: the order statistics come
 * from a histogram, and the index and interpolation are numpy's float64 arithmetic.
 */
function percentiles16(samples, percents) {
  const counts = new Float64Array(UINT16_VALUES);
  for (let i = 0; i < samples.length; i += 1) counts[samples[i]] += 1;
  const n = samples.length;
  const ranked = (index) => { // the sample of that rank in sorted order
    let seen = 0;
    for (let value = 0; value < UINT16_VALUES; value += 1) {
      seen += counts[value];
      if (seen > index) return value;
    }
    return UINT16_VALUES - 1;
  };
  return percents.map((percent) => {
    const virtual = (n - 1) * (percent / 100);
    const previous = Math.floor(virtual);
    if (previous >= n - 1) return ranked(n - 1);
    const below = ranked(previous);
    const above = ranked(previous + 1);
    const gamma = virtual - previous;
    const difference = above - below;
    // numpy's _lerp: from the nearer end, so that gamma 1 gives `above` exactly.
    return gamma >= 0.5 ? above - difference * (1 - gamma) : below + difference * gamma;
  });
}

/**
 * A 16-bit image to 8 bits as `ophreg register` and the Python one-graph wrapper do
 * (imageio.stretch_to_uint8): its 0.1-99.9 percentile range onto 0-255, clipped, truncated.
 */
export function stretchToUint8(samples) {
  const [low, found] = percentiles16(samples, STRETCH_PERCENTILES);
  const high = found <= low ? low + 1 : found;
  const scale = 255 / (high - low);
  const stretched = new Uint8Array(samples.length);
  for (let i = 0; i < samples.length; i += 1) {
    stretched[i] = Math.min(255, Math.max(0, (samples[i] - low) * scale));
  }
  return stretched;
}

const PNM_CHANNELS = { P5: 1, P6: 3 };
const isSpace = (byte) => byte === 0x20 || (byte >= 0x09 && byte <= 0x0d);

/** Whether the bytes start like a Netpbm file ("P1" to "P7"). */
export const isNetpbm = (bytes) => bytes[0] === 0x50 && bytes[1] >= 0x31 && bytes[1] <= 0x37;

/**
 * Binary PGM (P5) and PPM (P6) of 8 bits, which neither sharp nor browsers read: the header is
 * the magic and three decimal fields (width, height, maxval) separated by whitespace and
 * # comments, then exactly one whitespace byte, then the rows.
 */
export function decodePnm(bytes, label, maxPixels) {
  const magic = String.fromCharCode(bytes[0], bytes[1]);
  const channels = PNM_CHANNELS[magic];
  if (!channels) {
    throw new UsageError(`${label}: Netpbm ${magic} is not read here (binary PGM P5 and PPM P6 ` +
                         'are)');
  }
  const fields = [];
  let at = 2;
  while (fields.length < 3) {
    while (at < bytes.length && isSpace(bytes[at])) at += 1;
    if (bytes[at] === 0x23) { // '#': a comment to the end of the line
      while (at < bytes.length && bytes[at] !== 0x0a) at += 1;
      continue;
    }
    let value = 0;
    const start = at;
    for (; at < bytes.length && bytes[at] >= 0x30 && bytes[at] <= 0x39; at += 1) {
      value = value * 10 + bytes[at] - 0x30;
    }
    if (start === at || at - start > 9) throw new UsageError(`${label}: broken ${magic} header`);
    fields.push(value);
  }
  const [width, height, maxValue] = fields;
  if (width < 1 || height < 1) throw new UsageError(`${label}: empty ${magic} image`);
  checkBudget(label, width, height, maxPixels);
  if (maxValue < 1 || maxValue > 255) {
    throw new UsageError(`${label}: ${maxValue > 255 ? '16-bit' : 'broken'} ${magic} (maxval ` +
                         `${maxValue}); 8-bit images only here`);
  }
  if (!isSpace(bytes[at])) throw new UsageError(`${label}: broken ${magic} header`);
  const start = at + 1;
  const size = width * height * channels;
  if (bytes.length < start + size) throw new UsageError(`${label}: truncated (${magic})`);
  return { pixels: new Uint8Array(bytes.subarray(start, start + size)), width, height, channels };
}

const scalar = (tensor) => Number(tensor.data[0]);
const rounded = (value, digits) => Math.round(value * 10 ** digits) / 10 ** digits;
const rows = (tensor, columns) => Array.from(
  { length: tensor.data.length / columns },
  (_, row) => Array.from(tensor.data.subarray(row * columns, (row + 1) * columns), Number));

function word(list, code, what) {
  if (!Number.isInteger(code) || code < 0 || code >= list.length) {
    throw new UsageError(`the graph returned ${what} code ${code}, not in the contract`);
  }
  return list[code];
}

/**
 * The object `ophreg register --json` writes (DESIGN.md, "The CLI contract"), decoded from the
 * graph's outputs as ophreg_rt/one_graph.py decodes them. `run` gives what the graph cannot
 * know: fixedSize and movingSize ([width, height]), timings (milliseconds by stage), models
 * ({name: {file, sha256}}), provider, and metadata (the graph's, for the matcher and the
 * transform model it was exported with).
 */
export function resultDocument(contract, outputs, run) {
  const n = contract.names;
  const status = word(contract.status, scalar(outputs[n.status]), 'status');
  const reason = word(contract.reasons, scalar(outputs[n.reason]), 'reason');
  const transform = word(contract.transforms, scalar(outputs[n.transform]), 'transform');
  const ok = status === contract.status[0];
  const affine = transform === contract.transforms[0];
  const matrix = rows(outputs[n.matrix], 3);
  const matches = Array.from(outputs[n.match_mask].data).filter(Boolean).length;
  const metadata = (key) => run.metadata[contract.metadata_prefix + contract.metadata_keys[key]];
  return {
    status,
    reason,
    transform,
    affine: ok && affine ? matrix.slice(0, 2) : null,
    matrix: ok && affine ? matrix : null,
    quadratic: ok && !affine
      ? { terms: contract.quadratic_terms, coefficients: rows(outputs[n.coefficients], 6) }
      : null,
    model_selection: modelSelection(contract, outputs, run.fixedSize, metadata('transform_model')),
    fixed_size: run.fixedSize,
    moving_size: run.movingSize,
    num_keypoints: Array.from(outputs[n.num_keypoints].data, Number),
    num_matches: matches,
    num_inliers: scalar(outputs[n.num_inliers]),
    timings_ms: Object.fromEntries(
      Object.entries(run.timings).map(([stage, ms]) => [stage, rounded(ms, 3)])),
    features: 'superpoint',
    matcher: metadata('matcher'),
    models: run.models,
    provider: run.provider,
  };
}

/** `auto`'s choice in the runtime's words; null when no affine was accepted (nothing grown). */
function modelSelection(contract, outputs, fixedSize, requested) {
  const n = contract.names;
  const codes = contract.quadratic_refusal_codes;
  const code = scalar(outputs[n.quadratic_refusal]);
  let why = word(contract.quadratic_refusals, code, 'quadratic refusal');
  if (code === codes.affine_failed) return null;
  // The graph states residuals at the reference size; the runtime's JSON in fixed pixels.
  const toFixed = Math.max(...fixedSize) / contract.reference_size;
  const [affine, quadratic] = Array.from(outputs[n.loo_rms].data, (value) => value * toFixed);
  const fitted = Number.isFinite(affine) && Number.isFinite(quadratic);
  const selection = {
    requested,
    loo_rms_px: fitted ? { affine: rounded(affine, 4), quadratic: rounded(quadratic, 4) } : null,
  };
  if (why === null) {
    selection.chosen = contract.transforms[1];
    return selection;
  }
  if (code === codes.no_gain && fitted) { // then the runtime says by how much
    why = contract.no_gain_words
      .replace('{gain}', (quadratic / Math.max(affine, 1e-12)).toFixed(2))
      .replace('{auto_gain}', String(contract.auto_gain));
  }
  selection.why_not_quadratic = why;
  selection.chosen = contract.transforms[0];
  return selection;
}

/** Lower-case hexadecimal of a digest's bytes. */
export function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (byte) => byte.toString(16).padStart(2, '0')).join('');
}
