/**
 * The TypeScript and JavaScript code blocks of the README and docs/*.md, and what their comments
 * promise they print.
 *
 * A block's fence is ```ts (or ```typescript, ```js, ```javascript, ```mts, ```mjs), optionally
 * followed by tags:
 *
 *   ```ts                    runs as written (importing from 'memfabric'), and prints what its
 *                            comments promise
 *   ```ts needs=etcd         runs with a one-member etcd the test starts on a free loopback port,
 *                            its endpoints in MEMFABRIC_ETCD (comma-separated)
 *   ```ts needs=appliance    runs next to an appliance in another process (the test's), its
 *                            region `default` at MEMFABRIC_NBD_URL and its admin API at
 *                            MEMFABRIC_URL (token in MEMFABRIC_TOKEN)
 *   ```ts no-run             type-checked only: running it needs machines the test cannot start.
 *                            Keep these rare; say in the text around it what it needs.
 *
 * Every block is type-checked, whatever its tags. Blocks in other languages (sh, json, text) are
 * not touched.
 *
 * What a block promises: each `console.log(...);` statement that ends its line prints exactly one
 * line, in order. A trailing `// text` comment says what that line is: exactly `text`; or, for
 * `// 256: why`, the line is the one word `256` and the rest explains it; or, for `// text…` (an ellipsis at
 * the end), the line starts with `text` (ports and other values that change from run to run).
 * A console.log without a comment may print anything.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

export const RUN_TAGS = ['needs=etcd', 'needs=appliance', 'no-run'] as const;
export type BlockTag = (typeof RUN_TAGS)[number];

const LANGUAGES = new Set(['ts', 'typescript', 'js', 'javascript', 'mts', 'mjs']);

export interface CodeBlock {
  /** The markdown file, relative to the repository root (README.md, docs/nbd.md). */
  file: string;
  /** The 1-based line of the opening fence. */
  line: number;
  language: string;
  tags: string[];
  code: string;
}

/** The markdown files whose blocks are checked: README.md and every docs/*.md, sorted. */
export function documentFiles(root: string): string[] {
  const docs = readdirSync(join(root, 'docs'))
    .filter((name) => name.endsWith('.md'))
    .sort()
    .map((name) => `docs/${name}`);
  return ['README.md', ...docs];
}

/** The code blocks of one markdown text, in TypeScript/JavaScript, with their fence tags. */
export function codeBlocks(file: string, markdown: string): CodeBlock[] {
  const blocks: CodeBlock[] = [];
  const lines = markdown.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const fence = /^(\s*)(`{3,}|~{3,})\s*([\w-]*)\s*(.*)$/.exec(lines[i]!);
    if (fence === null) continue;
    const [, indent, marker, language, info] = fence as unknown as [string, string, string, string, string];
    // The block ends at the next fence of the same kind, at least as long.
    let end = i + 1;
    while (end < lines.length && !lines[end]!.trimStart().startsWith(marker)) end++;
    if (LANGUAGES.has(language.toLowerCase())) {
      blocks.push({
        file,
        line: i + 1,
        language: language.toLowerCase(),
        tags: info.split(/\s+/).filter((tag) => tag !== ''),
        code: lines
          .slice(i + 1, end)
          .map((line) => (line.startsWith(indent) ? line.slice(indent.length) : line))
          .join('\n'),
      });
    }
    i = end;
  }
  return blocks;
}

/** Every checked block of the repository's README and docs. */
export function repositoryBlocks(root: string): CodeBlock[] {
  return documentFiles(root).flatMap((file) => codeBlocks(file, readFileSync(join(root, file), 'utf8')));
}

/** A file name for a block, unique within the repository: docs/nbd.md line 8 → docs-nbd-md-8. */
export function blockName(block: CodeBlock): string {
  return `${block.file.replace(/[^\w]+/g, '-')}-${block.line}`;
}

/**
 * What the block promises to print: one entry per console.log statement ending a line, its
 * comment (see the header), or undefined for "anything".
 */
export function promisedLines(code: string): (string | undefined)[] {
  return [...code.matchAll(/console\.log\(.*\);(?: \/\/ (.*))?$/gm)].map((match) => match[1]?.trim());
}

/** Whether an output line is what a comment promises (see the header). */
export function keepsPromise(line: string, comment: string): boolean {
  if (comment.endsWith('…')) return line.startsWith(comment.slice(0, -1));
  // A value with an explanation: one word, then ': ' (a longer line is taken whole: `{ ok: true }`).
  return line === comment || (!/\s/.test(line) && comment.startsWith(`${line}: `));
}

/** Why `output` breaks the block's promises, or undefined when it keeps them. */
export function brokenPromise(code: string, output: string): string | undefined {
  const lines = output.trimEnd() === '' ? [] : output.trimEnd().split('\n');
  const promised = promisedLines(code);
  if (lines.length !== promised.length) {
    return `printed ${lines.length} lines, the block's console.log statements promise ${promised.length}:\n${output}`;
  }
  for (const [i, comment] of promised.entries()) {
    if (comment !== undefined && !keepsPromise(lines[i]!, comment)) {
      return `line ${i + 1} is "${lines[i]}", the comment promises "${comment}"`;
    }
  }
  return undefined;
}
