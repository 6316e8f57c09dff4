/**
 * Every TypeScript example in docs/heap-values.md runs against a fresh heap memory and prints
 * what its comments promise (`console.log(x); // expected`), as test/readme.test.ts does for the
 * README. The examples import from 'memfabric'; here that is the source tree.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../..', import.meta.url));
const doc = readFileSync(join(root, 'docs/heap-values.md'), 'utf8');
const examples = [...doc.matchAll(/```ts\n([\s\S]*?)```/g)].map((match) => match[1]!);

test('docs/heap-values.md has examples for structs and blobs', () => {
  assert.ok(examples.length >= 5);
});

for (const [index, example] of examples.entries()) {
  test(`heap-values example ${index + 1} runs and prints what its comments promise`, () => {
    const dir = mkdtempSync(join(tmpdir(), 'memfabric-heap-values-'));
    try {
      const shim = join(dir, 'memfabric.mts');
      writeFileSync(
        shim,
        ['src/index.ts', 'src/heap/struct.ts', 'src/heap/blob.ts']
          .map((path) => `export * from ${JSON.stringify(join(root, path))};`)
          .join('\n'),
      );
      const file = join(dir, 'example.mts');
      const prelude = `import { testMemory } from ${JSON.stringify(join(root, 'test/heap/test-allocator.ts'))};\nconst heap = testMemory();\n`;
      writeFileSync(file, prelude + example.replace("from 'memfabric'", `from ${JSON.stringify(shim)}`));
      const output = execFileSync(process.execPath, ['--import', 'tsx', file], {
        cwd: root,
        encoding: 'utf8',
        timeout: 60_000,
      })
        .trim()
        .split('\n');
      const promised = [...example.matchAll(/console\.log\(.*\);(?: \/\/ (.*))?$/gm)].map(
        (match) => match[1],
      );
      assert.equal(output.length, promised.length, output.join('\n'));
      promised.forEach((expected, i) => {
        if (expected !== undefined)
          assert.equal(output[i], expected, `line ${i + 1} of example ${index + 1}`);
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
