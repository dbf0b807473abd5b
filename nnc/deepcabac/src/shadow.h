// Parameter-optimisation pass (§3.6) entry points. The pass runs nine shadow probability models per
// context-coded bin; shadow_avx2.cpp holds a build of it for CPUs with AVX2 (all nine models in one
// register), chosen at run time.
#pragma once

#include <cstdint>

#include "deepcabac.h"

namespace nncabac {

// A run of block rows [br0, br1) the pass may take on its own thread: the DQ state and the neighbour class
// (of the last element before br0 in scan order; this pass does not reset it between block rows) at br0.
struct RowChunk {
  int64_t br0 = 0, br1 = 0;
  int state = 0;
  int nb = 0;
};

struct ShadowTask {
  const TensorSpec* spec = nullptr;
  const int32_t* levels = nullptr;  // stored integers, row-major
  const uint8_t* skip = nullptr;    // row-skip flags or nullptr
  bool tca = false;                 // TCA context selection in use
  bool hd = false;                  // HDSP context selection in use
  // Optional (block rows >= 2): the block rows split into chunks, passed on threads of their own. The
  // shadow models restart at every block row and the costs are sums, so the result is the same.
  const RowChunk* chunks = nullptr;
  int nchunks = 0;
};

// Number of contexts of a tensor with unary length n (size of best[]).
int context_count(int unary_length);

// best[i] = ecoIdx (0..8) with the lowest estimated cost for context i.
void shadow_best_portable(const ShadowTask& t, uint8_t* best);
// Same result; false when this build has no AVX2 version (best[] untouched). Call only when cpu_has_avx2().
bool shadow_best_avx2(const ShadowTask& t, uint8_t* best);

}  // namespace nncabac
