/** Exponential backoff with full jitter: attempt 1 waits up to `base`, doubling up to `cap`. */
export function backoffDelay(attempt: number, base = 100, cap = 5_000): number {
  const ceiling = Math.min(cap, base * 2 ** Math.max(0, attempt - 1));
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
