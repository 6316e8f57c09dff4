/**
 * Every TypeScript example in the README runs, and prints what its comments promise
 * (`console.log(x); // expected` lines; a console.log without a comment may print anything).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const readme = readFileSync(join(root, 'README.md'), 'utf8');
const examples = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((match) => match[1]!);

test('the README has TypeScript examples', () => {
  assert.ok(examples.length >= 2);
});

for (const [index, example] of examples.entries()) {
  test(`README example ${index + 1} runs and prints what its comments promise`, () => {
    const dir = mkdtempSync(join(tmpdir(), 'memfabric-readme-'));
    try {
      const file = join(dir, 'example.mts');
      writeFileSync(
        file,
        example.replace("from 'memfabric'", `from ${JSON.stringify(join(root, 'src/index.ts'))}`),
      );
      const output = execFileSync(process.execPath, ['--import', 'tsx', file], {
        cwd: root,
        encoding: 'utf8',
        timeout: 60_000,
      })
        .trim()
        .split('\n');
      const promised = [...example.matchAll(/console\.log\(.*\);(?: \/\/ (.*))?$/gm)].map((match) =>
        match[1] === undefined ? undefined : match[1].split(':')[0]!.trim(),
      );
      assert.equal(output.length, promised.length, output.join('\n'));
      promised.forEach((expected, i) => {
        if (expected !== undefined)
          assert.ok(output[i]!.startsWith(expected), `line ${i}: "${output[i]}" vs "${expected}"`);
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
