/**
 * The README's API example runs and prints what its comments say.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));

test('the README memory example runs and prints what its comments promise', () => {
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  const example = /```ts\n([\s\S]*?)```/.exec(readme)?.[1];
  assert.ok(example, 'README has a ts example');
  const dir = mkdtempSync(join(tmpdir(), 'memfabric-readme-'));
  try {
    const file = join(dir, 'example.ts');
    const source = example.replace("from 'memfabric'", `from ${JSON.stringify(join(root, 'src/index.ts'))}`);
    writeFileSync(file, source);
    const output = execFileSync(process.execPath, ['--import', 'tsx', file], { cwd: root, encoding: 'utf8' })
      .trim()
      .split('\n');
    const promised = [...example.matchAll(/console\.log\(.*\); \/\/ (.*)/g)].map((match) =>
      match[1]!.split(':')[0]!.trim(),
    );
    assert.equal(output.length, promised.length);
    output.forEach((line, i) =>
      assert.ok(line.startsWith(promised[i]!), `line ${i}: "${line}" vs "${promised[i]}"`),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
