/** Hides env var values in instance output before it reaches the logs (like CI secret masking). */
const MIN_SECRET_LENGTH = 4; // shorter values would mask ordinary words

export function secretMasker(env: Record<string, string>): (line: string) => string {
  const secrets = Object.values(env)
    .filter((v) => v.length >= MIN_SECRET_LENGTH)
    .sort((a, b) => b.length - a.length);
  if (secrets.length === 0) return (line) => line;
  return (line) => secrets.reduce((out, s) => out.split(s).join('****'), line);
}
