// Char offsets for an arbitrary token-id sequence (e.g. the ids a model sampled), without
// re-encoding: the ids are decoded piece by piece from a per-id byte table and each token gets
// the code-point span [a, b) of the decoded text its bytes fall in. Pure C++17, no torch.
//
// The table is built once per tokenizer on the Python side (mta_ext/offsets.py) from the
// tokenizer's decoder: byte-level BPE (GPT-2 byte map), SentencePiece-style pieces (U+2581 ->
// space, <0xHH> byte-fallback pieces, the decoder's strip of the first leading space) and
// WordPiece ("##" continuations, a space before every other token). Each id has two byte
// strings: as the first emitted token and as any later one (decoders treat the first token
// differently: Strip, Metaspace's prepend scheme, WordPiece's space).
//
// Decoding follows `tokenizers`: byte-fallback pieces in a run are decoded together, and a run
// that is not valid UTF-8 becomes one U+FFFD per piece (tokenizers' ByteFallback decoder); any
// other invalid UTF-8 (a byte-level sample cut inside a character, or bytes that never form one)
// becomes one U+FFFD per maximal invalid subpart (Rust's from_utf8_lossy, Python's
// errors="replace"). A token whose bytes all land in U+FFFD replacements gets no offsets: the
// empty span (p, p) at its position, which the alignment treats like a special token. Special
// tokens also get (p, p); their text is kept (as decode(skip_special_tokens=False)) unless
// skipped. Linear in tokens + bytes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mta_align {

// Per-id flags of the piece table.
enum PieceFlag : uint8_t {
  kPieceSpecial = 1,       // a special token: (p, p) offsets; dropped with skip_special
  kPieceByteFallback = 2,  // a <0xHH> piece: decoded with its neighbours in a run
  kPieceUnknown = 4,       // an id outside the vocabulary: rejected
};

// Views of the table arrays (C-contiguous, owned by the caller).
struct PieceTableView {
  const uint8_t* rest_bytes;   // concatenated bytes of each id as a later token
  const int64_t* rest_off;     // [V+1] prefix offsets into rest_bytes
  const uint8_t* first_bytes;  // the same as the first emitted token
  const int64_t* first_off;    // [V+1]
  const uint8_t* flags;        // [V] PieceFlag bits
  const uint8_t* rest_sep;     // [V] leading bytes of the later-token string that are a
                               // separator the decoder inserts (WordPiece's space): in the
                               // text, in no token's span
  int64_t vocab;               // V
};

struct IdsDecoded {
  std::string text;              // UTF-8
  std::vector<int64_t> offsets;  // [n, 2] code-point offsets into text
  int64_t broken = 0;            // tokens that got no offsets because of invalid UTF-8
};

// Decode one id sequence. Throws std::invalid_argument naming the position of an id outside
// [0, V) or an unknown id.
IdsDecoded decode_ids(const PieceTableView& table, const int64_t* ids, int64_t n,
                      bool skip_special);

}  // namespace mta_align
