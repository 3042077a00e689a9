/** mulberry32: a small seeded generator, so a failing fault schedule can be replayed from its seed. */
export function seeded(start: number): () => number {
  let state = start >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

/** A seeded number between `low` and `high`, drawn from `random`. */
export function between(random: () => number): (low: number, high: number) => number {
  return (low, high) => low + random() * (high - low);
}
