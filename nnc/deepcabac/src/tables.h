// Constant tables of the DeepCABAC entropy coder (ISO/IEC 15938-17).
// The numbers are format data (they define the bitstream); see NNC_BITSTREAM.md §3.3 and Appendix A.
#pragma once

#include <cstdint>

namespace nncabac {

// LPS sub-range, indexed by 32 * ((R >> 5) & 7) + |floor(P / 128)|.
alignas(64) inline constexpr uint8_t kLpsRange[256] = {
    128, 112, 97,  84,  74,  65,  57,  50,  45,  39,  34,  30,  27,  23,  20,  18,
    15,  14,  12,  11,  10,  9,   7,   7,   5,   5,   4,   4,   3,   3,   2,   2,
    142, 125, 108, 93,  82,  72,  63,  56,  50,  43,  38,  33,  30,  26,  22,  20,
    17,  16,  13,  12,  11,  10,  8,   8,   6,   6,   5,   5,   3,   3,   2,   2,
    156, 137, 119, 103, 90,  79,  70,  61,  55,  48,  42,  37,  33,  28,  24,  22,
    19,  17,  15,  13,  12,  11,  9,   9,   6,   6,   5,   5,   4,   4,   2,   2,
    171, 150, 130, 112, 99,  87,  76,  67,  60,  52,  46,  40,  36,  31,  27,  24,
    21,  19,  16,  15,  13,  12,  10,  10,  7,   7,   6,   6,   4,   4,   3,   3,
    185, 162, 141, 121, 107, 94,  82,  73,  65,  56,  50,  43,  39,  34,  29,  26,
    22,  21,  17,  16,  14,  13,  11,  11,  8,   8,   6,   6,   4,   4,   3,   3,
    199, 175, 152, 131, 115, 101, 89,  78,  70,  61,  54,  47,  42,  36,  31,  28,
    24,  22,  19,  17,  15,  14,  12,  12,  8,   8,   7,   7,   5,   5,   3,   3,
    213, 187, 163, 140, 123, 108, 95,  84,  75,  65,  58,  50,  45,  39,  33,  30,
    26,  24,  20,  18,  16,  15,  13,  13,  9,   9,   7,   7,   5,   5,   3,   3,
    228, 200, 174, 150, 132, 116, 102, 90,  80,  70,  62,  54,  48,  42,  36,  32,
    28,  26,  22,  20,  18,  16,  14,  14,  10,  10,  8,   8,   6,   6,   4,   4,
};

// Adaptation step curve of the dual-rate probability model.
inline constexpr int16_t kAdaptCurve[32] = {
    2512, 2288, 2064, 1840, 1616, 1392, 1168, 944, 720, 560, 464, 368, 272, 208, 144, 80,
    64,   64,   64,   64,   64,   64,   64,   64,  64,  64,  64,  64,  64,  64,  64,  0,
};

// Initialisation sets selected by the signalled ecoIdx: fast shift, slow shift, P0, S0.
struct InitSet {
  uint8_t fast_shift;
  uint8_t slow_shift;
  int16_t p0;
  int8_t s0;
};
inline constexpr InitSet kInitSets[9] = {
    {5, 4, 0, 0},     {5, 4, -1310, -41}, {5, 4, 3039, 95}, {4, 5, 0, 0},   {6, 6, 962, 30},
    {6, 6, 3039, 95}, {6, 6, -673, -21},  {7, 5, 0, 0},     {7, 5, 962, 30},
};

// Dependent-quantisation state machine: next state for (state, parity of the coded level).
inline constexpr uint8_t kDqNext[8][2] = {
    {0, 2}, {7, 5}, {1, 3}, {6, 4}, {2, 0}, {5, 7}, {3, 1}, {4, 6},
};

}  // namespace nncabac
