// A node:test reporter that keeps, per test file, the time its top-level tests took (a file runs
// them one after another), so that run-tests.mjs can print the slowest files once the run ends:
// whoever keeps the suite within its time budget sees where the time goes in every run, CI's too.
//
// It writes the table to the file named by TEST_TIMINGS_FILE after every test instead of
// printing it when its stream ends: under --test-force-exit the runner exits before a reporter's
// stream is drained.
import { writeFileSync } from 'node:fs';
import { relative } from 'node:path';

// eslint-disable-next-line require-yield -- it prints nothing: its table goes to a file
export default async function* testTimings(source) {
  const out = process.env.TEST_TIMINGS_FILE;
  const perFile = {};
  for await (const event of source) {
    if ((event.type === 'test:pass' || event.type === 'test:fail') && event.data.nesting === 0) {
      const file =
        event.data.file === undefined ? '(unknown file)' : relative(process.cwd(), event.data.file);
      perFile[file] = (perFile[file] ?? 0) + (event.data.details?.duration_ms ?? 0);
      if (out !== undefined) writeFileSync(out, JSON.stringify(perFile));
    }
  }
}
