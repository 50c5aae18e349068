// The process's Prometheus registry. Each Engine owns one (so tests can run several engines in one
// process without their series mixing); the web process serves it at /metrics.
import { collectDefaultMetrics, Registry } from 'prom-client'

export class Metrics {
  readonly registry = new Registry()

  constructor() {
    collectDefaultMetrics({ register: this.registry })
  }

  /** The exposition text and its content type. */
  async expose(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() }
  }
}
