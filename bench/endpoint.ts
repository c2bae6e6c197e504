/** Where a function answers: directly from its node process, or through Aether's invocation route. */
export interface Endpoint {
  origin: string;
  path: string;
}
