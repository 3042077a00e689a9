import pgListen from 'pg-listen';

// pg-listen is CommonJS with an `exports.default`; under Node's ESM loader it arrives wrapped.
const pgListenModule: unknown = pgListen;
export const createSubscriber: typeof pgListen.default =
  typeof pgListenModule === 'function' ? (pgListenModule as typeof pgListen.default) : pgListen.default;
