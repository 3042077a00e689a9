#!/usr/bin/env node
// The `pgtide` command: see `pgtide --help`, and the README's "CLI" section.
import { main } from './cli/program.js';

const code = await main(process.argv);
process.exitCode = code;
// Everything is closed by now; should a stray handle linger, do not hang on it.
setTimeout(() => process.exit(code), 2_000).unref();
