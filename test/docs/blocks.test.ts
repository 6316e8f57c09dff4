/**
 * The code-block reader behind test/docs/examples.test.ts: which blocks it finds, with what tags
 * and code, and how it reads a block's promises. A block it missed would go unchecked silently.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { RUN_TAGS, blockName, brokenPromise, codeBlocks, keepsPromise, promisedLines } from './blocks.js';

test('TypeScript and JavaScript blocks are found with their tags; other languages are not', () => {
  const markdown = [
    '# Title',
    '```sh',
    'npm test',
    '```',
    '```ts',
    "import { FramePool } from 'memfabric';",
    '```',
    'Text.',
    '```ts needs=appliance',
    'console.log(1); // 1',
    '```',
    '```json',
    '{ "a": 1 }',
    '```',
    '````md',
    '```ts',
    'not a block of its own: inside a longer fence',
    '```',
    '````',
    '- a list item:',
    '',
    '  ```js no-run',
    '  const x = 1;',
    '    indented();',
    '  ```',
    '~~~typescript',
    'let y = 2;',
    '~~~',
    '```',
    'plain',
    '```',
  ].join('\n');
  const blocks = codeBlocks('docs/x.md', markdown);
  assert.deepEqual(
    blocks.map(({ line, language, tags, code }) => ({ line, language, tags, code })),
    [
      { line: 5, language: 'ts', tags: [], code: "import { FramePool } from 'memfabric';" },
      { line: 9, language: 'ts', tags: ['needs=appliance'], code: 'console.log(1); // 1' },
      { line: 22, language: 'js', tags: ['no-run'], code: 'const x = 1;\n  indented();' },
      { line: 26, language: 'typescript', tags: [], code: 'let y = 2;' },
    ],
  );
  assert.equal(blockName(blocks[1]!), 'docs-x-md-9');
});

test('any text with blocks in it reads back block for block (property)', () => {
  const codeLine = fc
    .string({ maxLength: 40 })
    .filter((line) => !/^\s*(`{3}|~{3})/.test(line) && !line.includes('\n'));
  const section = fc.record({
    prose: fc.array(codeLine, { maxLength: 3 }),
    language: fc.constantFrom('ts', 'js', 'sh', 'json', ''),
    tags: fc.subarray([...RUN_TAGS]),
    code: fc.array(codeLine, { maxLength: 5 }),
  });
  fc.assert(
    fc.property(fc.array(section, { maxLength: 6 }), (sections) => {
      const lines: string[] = [];
      const expected: { line: number; tags: string[]; code: string }[] = [];
      for (const { prose, language, tags, code } of sections) {
        lines.push(...prose);
        if (language === 'ts' || language === 'js')
          expected.push({ line: lines.length + 1, tags, code: code.join('\n') });
        lines.push(['```' + language, ...tags].join(' ').trimEnd(), ...code, '```');
      }
      const found = codeBlocks('x.md', lines.join('\n')).map(({ line, tags, code }) => ({
        line,
        tags,
        code,
      }));
      assert.deepEqual(found, expected);
    }),
  );
});

test('promises: exact lines, a value with an explanation after a colon, a prefix before an ellipsis', () => {
  const code = [
    'console.log(a); // 0 42',
    'console.log(b); // 256: the clone shares them',
    'console.log(c); // nbd://127.0.0.1:…',
    'console.log(d);',
    'if (x) console.error(e); // not stdout',
  ].join('\n');
  assert.deepEqual(promisedLines(code), [
    '0 42',
    '256: the clone shares them',
    'nbd://127.0.0.1:…',
    undefined,
  ]);
  assert.equal(brokenPromise(code, '0 42\n256\nnbd://127.0.0.1:4000/cache\nanything\n'), undefined);
  assert.match(brokenPromise(code, '0 42\n256\n')!, /printed 2 lines/);
  assert.match(brokenPromise(code, '0 4\n256\nnbd://127.0.0.1:1/x\nz')!, /line 1 is "0 4"/);
  assert.ok(keepsPromise('{ ok: true, problems: [] }', '{ ok: true, problems: [] }'));
  assert.ok(
    !keepsPromise('{ ok', '{ ok: true, problems: [] }'),
    'a colon without a space after it is part of the value',
  );
  assert.ok(!keepsPromise('2560', '256: why'));
  assert.ok(!keepsPromise('nbd://localhost', 'nbd://127.0.0.1:…'));
});
