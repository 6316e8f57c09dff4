/**
 * Every TypeScript example in docs/heap-collections.md runs and prints what its comments promise
 * (`console.log(x); // expected` lines), as test/readme.test.ts does for the README.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../..', import.meta.url));
const doc = readFileSync(join(root, 'docs/heap-collections.md'), 'utf8');
const examples = [...doc.matchAll(/```ts\n([\s\S]*?)```/g)].map((match) => match[1]!);
const shim = JSON.stringify(join(root, 'test/heap/colls-docs-shim.ts'));

test('docs/heap-collections.md has TypeScript examples', () => {
  assert.ok(examples.length >= 3);
});

for (const [index, example] of examples.entries()) {
  test(`heap collections example ${index + 1} runs and prints what its comments promise`, () => {
    const dir = mkdtempSync(join(tmpdir(), 'memfabric-colls-doc-'));
    try {
      const file = join(dir, 'example.mts');
      writeFileSync(
        file,
        `import { memory } from ${shim};\n${example.replaceAll("from 'memfabric'", `from ${shim}`)}`,
      );
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
        if (expected !== undefined) assert.equal(output[i], expected.trim(), `line ${i}`);
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
