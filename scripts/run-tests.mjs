#!/usr/bin/env node
// Runs every test file under test/ (or the files/folders given) with node's test runner and tsx.
// Node 20's `--test` does not find .ts files by itself, so we list them here.
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

function collect(path, out) {
  if (statSync(path).isDirectory()) {
    for (const name of readdirSync(path).sort()) collect(join(path, name), out);
  } else if (path.endsWith('.test.ts')) {
    out.push(path);
  }
}

const roots = process.argv.slice(2).length > 0 ? process.argv.slice(2) : ['test'];
const files = [];
for (const root of roots) collect(root, files);
if (files.length === 0) {
  console.error(`no test files found under ${roots.join(', ')}`);
  process.exit(1);
}
// --test-force-exit: a file's process exits once its tests are done, even if a handle is left
// open. Twice under load a fleet test file (etcd3 clients, a controller candidate) passed and
// then never exited, which would hold CI until its deadline; the cause is not found yet (see
// docs/testing.md), and a leak must not cost the whole run.
const result = spawnSync(
  process.execPath,
  [
    '--import',
    'tsx',
    '--test',
    '--test-force-exit',
    '--test-reporter=spec',
    '--test-concurrency=2',
    ...files,
  ],
  { stdio: 'inherit' },
);
process.exit(result.status ?? 1);
