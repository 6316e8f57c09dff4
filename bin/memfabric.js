#!/usr/bin/env node
// The `memfabric` command.
//
// An installed package has dist/ and no src/: it runs the build, and never needs tsx (a
// devDependency, absent there). A repository checkout has src/ and tsx: it runs the source, even
// when a dist/ from an earlier build (or `npm install`'s prepare) is lying around, so the command
// never runs code older than the tree. A checkout whose dev dependencies are missing falls back to
// dist/.
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { dirname, join } from 'node:path';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const source = join(root, 'src', 'cli', 'main.ts');
const built = join(root, 'dist', 'cli', 'main.js');

function tsxLoader() {
  try {
    return import.meta.resolve('tsx/esm/api');
  } catch {
    return undefined;
  }
}

const loader = existsSync(source) ? tsxLoader() : undefined;
if (loader !== undefined) {
  const { register } = await import(loader);
  register();
  await import(pathToFileURL(source).href);
} else if (existsSync(built)) {
  await import(pathToFileURL(built).href);
} else {
  console.error(
    `memfabric: ${built} is missing. In a checkout of the repository run \`npm install\` ` +
      '(which builds it), or `npm run build`; an installed package always has it, so reinstall it.',
  );
  process.exit(1);
}
