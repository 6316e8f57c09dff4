#!/usr/bin/env node
// `npm run test:mutation [group ...]`: runs StrykerJS once per module group (scripts/mutation-groups.mjs),
// one group at a time, each mutating its modules and running only its test files. Reports land in
// reports/mutation/<group>.{html,json}; the scores are summarised at the end. See docs/testing.md.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { groups } from './mutation-groups.mjs';

const wanted = process.argv.slice(2);
for (const name of wanted) {
  if (!(name in groups)) {
    console.error(`unknown mutation group "${name}"; choose from ${Object.keys(groups).join(', ')}`);
    process.exit(2);
  }
}
const names = wanted.length > 0 ? wanted : Object.keys(groups);
let failed = false;
for (const name of names) {
  const started = Date.now();
  const result = spawnSync(
    process.execPath,
    ['node_modules/@stryker-mutator/core/bin/stryker.js', 'run', 'stryker.config.mjs'],
    { stdio: 'inherit', env: { ...process.env, MUTATION_GROUP: name } },
  );
  const minutes = ((Date.now() - started) / 60000).toFixed(1);
  if (result.status !== 0) {
    console.error(`mutation group ${name} failed (exit ${result.status}) after ${minutes} min`);
    failed = true;
    continue;
  }
  console.log(`mutation group ${name} done in ${minutes} min`);
}

// Score per mutated file: killed + timeout over all valid mutants (compile errors and ignored excluded).
console.log('\nmutation score per module:');
for (const name of names) {
  let report;
  try {
    report = JSON.parse(readFileSync(`reports/mutation/${name}.json`, 'utf8'));
  } catch {
    continue;
  }
  for (const [file, { mutants }] of Object.entries(report.files)) {
    const count = (status) => mutants.filter((m) => m.status === status).length;
    const detected = count('Killed') + count('Timeout');
    const undetected = count('Survived') + count('NoCoverage');
    const score = detected + undetected === 0 ? 100 : (100 * detected) / (detected + undetected);
    console.log(
      `  ${file.padEnd(34)} ${score.toFixed(1).padStart(5)}%  killed ${detected}, survived ${undetected}`,
    );
  }
}
process.exit(failed ? 1 : 0);
