/**
 * Every TypeScript/JavaScript block of README.md and docs/*.md (any docs file, including ones
 * added later) type-checks and runs as written, and prints what its comments promise. The
 * fence tags and the promise rules are in blocks.ts.
 *
 * The blocks import from 'memfabric' as a user would. Here that name is mapped to the source
 * (src/index.ts) by a tsconfig `paths` entry in the blocks' temporary folder, which tsc and tsx
 * both honour: no build is needed, and the check is of the tree as it is. The installed package
 * is checked by test/package/pack.test.ts.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startAppliance } from '../appliance/harness.js';
import { EtcdCluster } from '../support/etcd-cluster.js';
import { RUN_TAGS, blockName, brokenPromise, repositoryBlocks, type CodeBlock } from './blocks.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const tsx = import.meta.resolve('tsx');
const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
/** A block that has not finished in this long is hung (some start six appliances, on a loaded machine). */
const RUN_MS_MAX = 180_000;

const blocks = repositoryBlocks(root);
let dir = '';

/** The block's file in the temporary folder: .ts for TypeScript, .mjs for JavaScript. */
function fileOf(block: CodeBlock): string {
  return `${blockName(block)}.${block.language.startsWith('j') || block.language === 'mjs' ? 'mjs' : 'ts'}`;
}

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'memfabric-docs-'));
  mkdirSync(join(dir, 'tmp'));
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ type: 'module', private: true }));
  writeFileSync(
    join(dir, 'tsconfig.json'),
    JSON.stringify({
      extends: join(root, 'tsconfig.json'),
      compilerOptions: {
        noEmit: true,
        rootDir: '/',
        // Examples may name a value to show it without using it.
        noUnusedLocals: false,
        allowJs: true,
        checkJs: true,
        typeRoots: [join(root, 'node_modules', '@types')],
        paths: { memfabric: [join(root, 'src', 'index.ts')] },
      },
      include: [join(root, 'src', '**', '*.d.ts'), '*.ts', '*.mjs'],
    }),
  );
  for (const block of blocks) writeFileSync(join(dir, fileOf(block)), block.code);
});

after(() => rmSync(dir, { recursive: true, force: true }));

/** Runs `command` to its end, with its output; SIGKILLed past `timeoutMs`. */
function run(
  command: string,
  args: string[],
  options: { cwd: string; env?: NodeJS.ProcessEnv; timeoutMs: number },
): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child: ChildProcess = spawn(command, args, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

test('the README and docs have checked TypeScript blocks, with known tags, importing from memfabric', () => {
  assert.ok(blocks.filter((block) => block.file === 'README.md').length >= 2);
  assert.ok(blocks.filter((block) => block.file !== 'README.md').length >= 10);
  for (const block of blocks) {
    const where = `${block.file}:${block.line}`;
    for (const tag of block.tags) {
      assert.ok((RUN_TAGS as readonly string[]).includes(tag), `${where}: unknown fence tag ${tag}`);
    }
    // A user has the package, not this repository's files.
    assert.doesNotMatch(
      block.code,
      /from '\.{1,2}\//,
      `${where}: imports a relative path; import from 'memfabric'`,
    );
  }
});

test('every block type-checks (strict, NodeNext)', async () => {
  const { code, stdout, stderr } = await run(
    process.execPath,
    [tsc, '-p', 'tsconfig.json', '--pretty', 'false'],
    {
      cwd: dir,
      timeoutMs: RUN_MS_MAX,
    },
  );
  // Errors name the markdown file and line, not the temporary file.
  const named = new Map(blocks.map((block) => [fileOf(block), block]));
  const report = stdout.replace(
    /^([\w.-]+)\((\d+),(\d+)\)/gm,
    (whole, file: string, line: string, column: string) => {
      const block = named.get(file);
      return block === undefined ? whole : `${block.file}:${block.line + Number(line)}:${column}`;
    },
  );
  assert.equal(code, 0, report + stderr);
});

describe('every block runs and prints what its comments promise', () => {
  for (const block of blocks) {
    const name = `${block.file}:${block.line}${block.tags.length > 0 ? ` (${block.tags.join(' ')})` : ''}`;
    if (block.tags.includes('no-run')) {
      test(name, { skip: 'no-run: type-checked only' }, () => {});
      continue;
    }
    test(name, async (t) => {
      // What a block makes in the temporary folder (heap images, key files) goes with this one.
      const env: NodeJS.ProcessEnv = { ...process.env, TMPDIR: join(dir, 'tmp') };
      if (block.tags.includes('needs=etcd')) {
        const cluster = await EtcdCluster.start(t, { members: 1 });
        if (cluster === undefined) return; // skipped: no etcd here
        env.MEMFABRIC_ETCD = cluster.endpoints.join(',');
      }
      if (block.tags.includes('needs=appliance')) {
        // In this process, so the block's own process may block on it (a pager's faults do).
        const { appliance, base } = await startAppliance({ memory: '512MiB' });
        t.after(() => appliance.stop());
        env.MEMFABRIC_NBD_URL = `nbd://127.0.0.1:${appliance.nbdAddress.port}/default`;
        env.MEMFABRIC_URL = base;
        env.MEMFABRIC_TOKEN = appliance.adminToken;
      }
      const result = await run(process.execPath, ['--import', tsx, fileOf(block)], {
        cwd: dir,
        env,
        timeoutMs: RUN_MS_MAX,
      });
      assert.equal(
        result.code,
        0,
        `exit ${result.code ?? result.signal}\n${result.stdout}\n${result.stderr}`,
      );
      const broken = brokenPromise(block.code, result.stdout);
      assert.equal(broken, undefined, broken);
    });
  }
});
