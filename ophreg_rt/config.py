"""The one home of every runtime default: preprocessing, matching, RANSAC, the transform
models and their refusals, masks, devices and the registrar's options.

What is baked into a graph at export lives in ``export/settings.py``; the runtime reads those
values back from the graph's metadata, never from a default. The CLI reads these dataclasses,
it never retypes a value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class PreprocessMode(str, Enum):
    """How an image becomes the network's grey input.

    ``grey``: luminance conversion, as in the paper. ``clahe``: CLAHE on the green channel of a
    colour image (where vessels have most contrast) or on the single channel of a grey image;
    DESIGN.md measured it to lift registration on fundus photographs.
    """

    GREY = "grey"
    CLAHE = "clahe"


#: Sides the network input may have (multiples of 8 within these bounds). Above 2048 one pair
#: costs more memory than a server can spare: peak resident memory of `ophreg register` measured
#: at 1.4 GB at 1024, 4.6 GB at 2048 and 17 GB at 4096 (2 cores, one thread).
NETWORK_SIDE_RANGE = (64, 2048)


@dataclass(frozen=True)
class PreprocessConfig:
    size: tuple[int, int] = (1024, 1024)  # (width, height) the network sees; multiples of 8
    mode: PreprocessMode = PreprocessMode.CLAHE
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: tuple[int, int] = (8, 8)


class TransformModel(str, Enum):
    """The transform fitted between the two images (degrees of freedom in brackets)."""

    AFFINE = "affine"  # (6) the method's
    SIMILARITY = "similarity"  # (4) rotation, isotropic scale, shift
    HOMOGRAPHY = "homography"  # (8)
    #: (12) second-order polynomial, for the curved retina (ophreg_rt/quadratic.py); grown
    #: from an affine RANSAC's inliers and refused when they cannot support it
    QUADRATIC = "quadratic"
    #: per pair, the quadratic when it predicts held-out inliers better than the affine by
    #: QuadraticConfig.auto_gain and passes its refusals, else the affine (DESIGN.md)
    AUTO = "auto"


#: Models not drawn by their own RANSAC: grown from an affine RANSAC's inliers (Registrar.fit).
GROWN_MODELS = (TransformModel.QUADRATIC, TransformModel.AUTO)


def ransac_model(model: TransformModel) -> TransformModel:
    """The model RANSAC draws hypotheses of when ``model`` is the one asked for."""
    model = TransformModel(model)
    return TransformModel.AFFINE if model in GROWN_MODELS else model


#: Side length, in pixels, of the frame in which pixel thresholds and errors are stated:
#: the method's network resolution. A threshold of 4 px means 4 px of a 1024-px-wide image.
REFERENCE_SIZE = 1024


@dataclass(frozen=True)
class RansacConfig:
    #: AUTO: on the real pairs' control points the quadratic it picks is 1.1-3.0x closer than
    #: the method's affine, and on known affine warps it keeps the affine (benchmarks/README.md,
    #: "Real-pair precision"); AFFINE, the method's model, stays available.
    model: TransformModel = TransformModel.AUTO
    threshold: float = 4.0  # inlier reprojection error, px at REFERENCE_SIZE
    confidence: float = 0.999  # adaptive stop: chance of having drawn one all-inlier sample
    max_iterations: int = 10_000
    batch_size: int = 256  # hypotheses scored together
    min_inliers: int = 10


@dataclass(frozen=True)
class QuadraticConfig:
    """How the quadratic is grown from the affine RANSAC's inliers, and when it is refused.

    Lengths are px at REFERENCE_SIZE. Values measured on the real pairs' control points and
    the known-truth benchmark (benchmarks/README.md, "Real-pair precision").
    """

    #: Inliers needed: 12 parameters, and enough beyond them that each held-out residual is
    #: an honest estimate.
    min_inliers: int = 30
    #: Convex hull of the inliers (fixed image) over the area the two images share: a
    #: quadratic extrapolates badly outside the points it was fitted on.
    min_coverage: float = 0.25
    #: Largest distance, over the shared field of view, between the quadratic and the affine
    #: fitted to the same inliers: the retina's curvature moves points by a few px, not tens.
    max_departure: float = 25.0
    #: Least-squares rounds on the inliers, each re-selecting inliers under the quadratic.
    refit_rounds: int = 5
    #: Departure and fold-over are judged where the inliers support the map: their convex hull
    #: (moving image) grown by this share of the moving image's longer side. Beyond it, in the
    #: black corners of a fundus photograph, any polynomial extrapolates freely.
    support_margin: float = 0.05
    #: Also seed the growth with a RANSAC of minimal 6-point quadratics, and keep the seed that
    #: grows more inliers: an affine's inliers on a strongly curved pair can leave the growth in
    #: a poorer fit (toolbox_fundus: 89 inliers, 1.40 px vs 99, 0.79 px).
    minimal_seed: bool = True
    #: AUTO keeps the quadratic only when its leave-one-out RMS residual on the inliers is
    #: below this share of the affine's. Measured ratios: 0.963-1.06 on 63 known affine warps
    #: (at 1.0 a third of them took the quadratic, mean error 0.27 -> 0.35 px), 0.55-0.92 on
    #: the four real pairs (the quadratic 0.2-1.5 px closer to their control points): 0.95
    #: separates the two; 0.9 would keep the affine on varia_R067_R118 (0.90) and cf_fa_demo.
    auto_gain: float = 0.95
    #: Once taken, the quadratic is refined on all matches by reweighted least squares with
    #: Cauchy weights 1 / (1 + (r / s)^2), s = cauchy_scale x RANSAC's threshold, for
    #: cauchy_rounds rounds (0: not refined), and kept if it passes the checks above with the
    #: inliers it then has. A match near the threshold weighs a little instead of all or
    #: nothing, so the answer no longer depends on RANSAC's draw: over 32 seeds on the real
    #: pairs the transforms stayed within 0.24 px of each other (9.4 px before) at the same
    #: control-point error (benchmarks/README.md, "How much the answer depends on RANSAC's
    #: seed"); the weights settle within 10 rounds.
    cauchy_rounds: int = 10
    cauchy_scale: float = 0.5


@dataclass(frozen=True)
class PlausibilityConfig:
    """Bounds on a transform between two photographs of one eye.

    Checked on the linear part of the transform expressed between images both scaled to
    REFERENCE_SIZE on their longer side, so that differing camera resolutions do not count.
    """

    min_scale: float = 0.5
    max_scale: float = 2.0
    max_anisotropy: float = 1.5  # ratio of the linear part's singular values (shear, squash)
    max_perspective: float = 0.5  # |h31|, |h32| * REFERENCE_SIZE, homography only
    #: Convex hull of the inliers (fixed image) over the area the images share, below which a
    #: planar model is refused: fitted on a corner, it extrapolates over the whole eye (SIFT on
    #: toolbox_example: 45 inliers on 3 % of the field, status ok and 12 px wrong on average).
    min_coverage: float = 0.1


class FeatureName(str, Enum):
    """The front end that finds and describes keypoints."""

    SUPERPOINT = "superpoint"  # the method's, an ONNX graph
    SIFT = "sift"  # the method's baseline (OpenCV); matched by its own ratio test, never by a
    # learned matcher, which was trained on SuperPoint descriptors


@dataclass(frozen=True)
class SiftConfig:
    """OpenCV SIFT on the same preprocessed network input as SuperPoint, then Lowe's ratio test."""

    #: Lowe (2004) kept a nearest neighbour closer than 0.8 times the second nearest.
    ratio: float = 0.8
    #: 0 keeps every detection; a CLAHE'd 1024-px fundus image gives a few thousand.
    max_features: int = 0
    contrast_threshold: float = 0.04  # OpenCV's default
    #: Also require the pair to be the moving image's nearest neighbour of the fixed one
    #: (benchmarks/accuracy.py measured its effect; see DESIGN.md).
    mutual: bool = True


@dataclass(frozen=True)
class MaskConfig:
    """Where keypoints may drive the transform (ophreg_rt/masks.py): inside the fundus field
    of view, off the image frame, off burnt-in text, graphics and frame lines.

    Features outside the eye agree with each other under the identity (the field-of-view
    edge, the frame and the overlays sit at the same pixels in both images), so they must not
    vote. Lengths are px at REFERENCE_SIZE (of the image's longer side), levels shares of the
    full intensity range.
    """

    enabled: bool = True
    #: Side of the longer axis at which the masks are computed (never upsampled): enough to
    #: resolve a 2-px text stroke at the network's resolution, and a few ms of work.
    working_side: int = 1024
    #: Side at which the field of view is found: a disc needs no more, and it is cheap.
    fov_side: int = 256
    #: Keypoints within this distance of the field-of-view edge are dropped: the edge is the
    #: strongest gradient in the image, and SuperPoint's cells (8 px) and descriptors see it
    #: from about two cells away.
    fov_margin: float = 16.0
    #: Frame of the image itself, dropped whatever it shows (crop edges, thin frame lines).
    border_margin: float = 8.0
    #: A surround is near black (or near white, for inverted angiogram-like images): its
    #: darkest 1 % must be at most this level, else the image is taken as all field of view.
    surround_level: float = 0.1
    #: A pixel belongs to the surround when it is at most this far above the surround's
    #: level: max(surround_tolerance, surround_share * (median - level)), so that a dark
    #: fundus still separates from its black surround.
    surround_tolerance: float = 0.04
    surround_share: float = 0.25
    #: The field of view is the convex hull of the lit regions at least fov_piece the size
    #: of the largest (vessels may cut a dark field into pieces; text in the surround is small).
    fov_piece: float = 0.1
    #: A field of view that leaves less than min_surround_share of the image outside is no
    #: boundary (a cropped, all-retina image keeps everything); one smaller than
    #: min_fov_share is implausible, and the whole image is kept rather than guessed at.
    min_surround_share: float = 0.02
    min_fov_share: float = 0.15
    #: Burnt-in overlays are drawn in pens' colours: every channel within 1 - overlay_level
    #: of black or of white, green or blue near white (white, yellow, green, cyan, blue,
    #: magenta; not red, which a fundus can be); on a grey image, near white. A fundus colour
    #: has a mid-range channel: green wherever red is high, blue in the optic disc (the level
    #: is loose enough for JPEG's smearing of a thin coloured stroke).
    overlay_level: float = 0.85
    #: ...with sharp edges: within overlay_stroke px, the working channel (green, or grey)
    #: differs by at least overlay_contrast (the flat inside of a saturated disc does not).
    overlay_stroke: float = 3.0
    overlay_contrast: float = 0.4
    #: ...and shaped like a glyph (no longer than overlay_glyph px) or a filled box (at least
    #: overlay_box_fill of its bounding box, holes filled, at least overlay_box_min px long,
    #: since any speck fills its box, and at most overlay_box share of the longer side): a
    #: saturated vessel tree of an angiogram is neither, a saturated optic disc is an
    #: ellipse (fill at most pi / 4).
    overlay_glyph: float = 64.0
    overlay_box_fill: float = 0.9
    overlay_box_min: float = 16.0
    overlay_box: float = 0.5
    #: A tinted glyph counts alone; a white one (white is also what an angiogram's vessels
    #: and an overexposed disc saturate to) only in a row of text_row_glyphs letters, each at
    #: least text_height px high and at most text_aspect times as wide as high: small letters
    #: touch and merge in threes, a vessel lying along a row is longer.
    text_row_glyphs: int = 3
    text_height: float = 6.0
    text_aspect: float = 4.0
    #: Frame lines, grids and rulers of any colour: thin (at most line_width px) ridges of at
    #: least line_contrast that run straight along a row or column for line_length (share of
    #: the longer side); vessels curve away from any row within a few px.
    line_width: float = 5.0
    line_contrast: float = 0.1
    line_length: float = 0.15
    #: Runs covering more than this share of the image are texture (noise strings ridges into
    #: runs everywhere), not drawn lines: a grid of 1-px lines every 128 px covers about 6 %.
    line_max_share: float = 0.25
    #: Dropped around every overlay stroke or line: a keypoint next to a stroke has the
    #: stroke in its descriptor.
    overlay_margin: float = 12.0


class MatcherName(str, Enum):
    MNN = "mnn"  # mutual nearest neighbour on descriptors, in NumPy (for SIFT: the ratio test)
    SUPERGLUE = "superglue"
    LIGHTGLUE = "lightglue"  # the trained matcher shipped in models/ (LightGlue for SuperPoint)


@dataclass(frozen=True)
class MnnConfig:
    #: Minimum cosine similarity of a mutual nearest-neighbour pair. 0.5 rather than the 0.7
    #: of SuperPoint's own demo: across modalities (colour vs angiogram) true pairs are less
    #: alike, and RANSAC removes what the lower floor lets through (benchmarks/accuracy.py).
    min_similarity: float = 0.5


class Device(str, Enum):
    CPU = "cpu"
    CUDA = "cuda"


#: Largest image (width x height, pixels) read by default, checked from the file's header
#: before decoding. A fundus camera gives at most about 24 megapixels; every full-resolution
#: copy (colour conversion, warp, blend, checkerboard) of a 100-megapixel RGB image is 300 MB.
MAX_PIXELS = 100_000_000
#: onnxruntime intra-op threads a caller may ask for: far beyond any machine's cores, far below
#: the thread count that exhausts a process.
MAX_THREADS = 256
#: RANSAC seeds are non-negative and fit a signed 64-bit integer (JSON readers, other runtimes).
MAX_SEED = 2**63 - 1
#: Images whose detections one worker keeps for reuse (ophreg_rt/detection_cache.py, LRU).
#: SuperPoint costs at most max_keypoints x 1052 B an image (1.03 MiB at 1024), so 64 images
#: are <= 66 MiB beside a worker's 1.3 GB peak (measured: default Registrar, a 1024-px pair);
#: one eye and field of a cohort (the unit batch schedules) is a handful of images.
DETECTION_CACHE_IMAGES = 64


class Precision(str, Enum):
    """Which shipped SuperPoint graph is loaded when the caller names none."""

    FP32 = "fp32"  # models/superpoint.onnx
    #: models/superpoint_int8.onnx (export/quantize.py): 2.7-3.9x faster on a VNNI CPU, same
    #: known-truth accuracy (benchmarks/README.md, "INT8"); unmeasured on CPUs without VNNI.
    INT8 = "int8"


#: The matcher of each front end when RegistrarConfig.matcher is None. SuperPoint: LightGlue,
#: measured (benchmarks/matcher_study.py, DESIGN.md): on the known-truth cases it registers at
#: least as many as MNN in every category with 1.3-2.6x the inliers, and holds up to 45-60
#: degrees of rotation where MNN's inliers collapse. SIFT: its own ratio test (MNN).
DEFAULT_MATCHERS = {FeatureName.SUPERPOINT: MatcherName.LIGHTGLUE,
                    FeatureName.SIFT: MatcherName.MNN}


def resolved_matcher(features: FeatureName, matcher: MatcherName | None) -> MatcherName:
    """The matcher that runs: ``matcher``, or the front end's default when it is None."""
    return DEFAULT_MATCHERS[FeatureName(features)] if matcher is None else MatcherName(matcher)


@dataclass(frozen=True)
class RegistrarConfig:
    features: FeatureName = FeatureName.SUPERPOINT
    #: None: the front end's default matcher (DEFAULT_MATCHERS).
    matcher: MatcherName | None = None
    device: Device = Device.CPU
    precision: Precision = Precision.FP32  # default SuperPoint graph; a named graph overrides it
    allow_cpu_fallback: bool = False
    threads: int | None = None  # None: onnxruntime's default
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    ransac: RansacConfig = field(default_factory=RansacConfig)
    plausibility: PlausibilityConfig = field(default_factory=PlausibilityConfig)
    quadratic: QuadraticConfig = field(default_factory=QuadraticConfig)
    mnn: MnnConfig = field(default_factory=MnnConfig)
    sift: SiftConfig = field(default_factory=SiftConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    seed: int = 0
    max_pixels: int = MAX_PIXELS  # per image; larger ones are refused before decoding
