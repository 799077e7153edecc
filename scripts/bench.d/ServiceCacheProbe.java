// ServiceCacheProbe — Apache Curator's ServiceCache (curator-x-discovery 5.4, Debian's jars) as
// the second baseline of `scripts/bench scale`: one CuratorFramework, one ServiceDiscovery at
// BASEPATH, one ServiceCache per service, each started with startImmediate() and built the
// plain way (serviceCacheBuilder().name(..).build(), Curator's defaults). Compiled and run by
// scripts/bench.d/scale.py (javac/java with the classpath of `scripts/curator classpath`).
//
//   ServiceCacheProbe CONNECT BASEPATH SERVICES DIGITS
//
// follows the services svc0000 … (SERVICES of them; names of DIGITS digits) under BASEPATH.
// Prints one line per event on stdout, T being System.nanoTime() (CLOCK_MONOTONIC, the clock of
// Python's time.perf_counter() on Linux) when it happened:
//
//   connected T                   the client is connected; the caches are about to start
//   started T                     every cache's startImmediate() has returned (the caches
//                                 load meanwhile: ready lines may come before it)
//   ready SERVICE COUNT T         that cache finished its initial load holding COUNT instances
//   synced T TOTAL                every cache has finished; TOTAL instances in all
//   event SERVICE COUNT T         a ServiceCacheListener.cacheChanged() of that cache; COUNT is
//                                 getInstances().size() inside the callback
//   state NAME T                  a connection state change (stateChanged)
//   heap USED COMMITTED MAX T     the answer to "heap" or "gc" (gc: System.gc() first), bytes
//   threads N T                   the answer to "heap" or "gc": the JVM's live threads
//
// Commands, one per line on stdin: heap, gc. EOF closes the caches, the discovery and the
// client, and exits 0. Any exception is printed to stderr and the exit status is 1.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.io.FileOutputStream;
import java.io.FileDescriptor;
import java.io.BufferedOutputStream;
import java.lang.management.ManagementFactory;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.state.ConnectionState;
import org.apache.curator.retry.ExponentialBackoffRetry;
import org.apache.curator.x.discovery.ServiceCache;
import org.apache.curator.x.discovery.ServiceDiscovery;
import org.apache.curator.x.discovery.ServiceDiscoveryBuilder;
import org.apache.curator.x.discovery.details.ServiceCacheListener;

@SuppressWarnings({"rawtypes", "unchecked"})
public class ServiceCacheProbe {
    private static final PrintStream OUT =
        new PrintStream(new BufferedOutputStream(new FileOutputStream(FileDescriptor.out), 1 << 16), false);

    private static void say(String line) {
        synchronized (OUT) {
            OUT.print(line);
            OUT.print('\n');
            OUT.flush();
        }
    }

    public static void main(String[] args) {
        try {
            if (args.length != 4) {
                throw new IllegalArgumentException("usage: ServiceCacheProbe CONNECT BASEPATH SERVICES DIGITS");
            }
            String connect = args[0], basePath = args[1];
            int services = Integer.parseInt(args[2]), digits = Integer.parseInt(args[3]);
            // A session longer than the bench's reconnect pause; Curator's usual retry policy.
            CuratorFramework client = CuratorFrameworkFactory.builder()
                    .connectString(connect)
                    .sessionTimeoutMs(30_000)
                    .connectionTimeoutMs(15_000)
                    .retryPolicy(new ExponentialBackoffRetry(200, 10))
                    .build();
            client.start();
            if (!client.blockUntilConnected(30, TimeUnit.SECONDS)) {
                throw new IllegalStateException("could not connect to ZooKeeper at " + connect);
            }
            say("connected " + System.nanoTime());
            ServiceDiscovery<Map> discovery = ServiceDiscoveryBuilder.builder(Map.class)
                    .client(client).basePath(basePath).build();
            discovery.start();
            List<ServiceCache<Map>> caches = new ArrayList<>(services);
            List<String> names = new ArrayList<>(services);
            for (int k = 0; k < services; k++) {
                String name = String.format("svc%0" + digits + "d", k);
                ServiceCache<Map> cache = discovery.serviceCacheBuilder().name(name).build();
                cache.addListener(new ServiceCacheListener() {
                    @Override
                    public void cacheChanged() {
                        long at = System.nanoTime();
                        say("event " + name + " " + cache.getInstances().size() + " " + at);
                    }

                    @Override
                    public void stateChanged(CuratorFramework c, ConnectionState state) {
                        // Every cache is told; one line is enough.
                        if (name.equals(names.get(0))) say("state " + state + " " + System.nanoTime());
                    }
                });
                names.add(name);
                caches.add(cache);
            }
            // startImmediate() does not wait for the initial load, but it is not free either (it
            // makes sure the service's node exists, a round trip, and starts the cache's reads):
            // the caches are polled every millisecond by a thread of their own from the first
            // start on, so that each ready line is timed within ~1 ms of its latch.
            CountDownLatch[] started = new CountDownLatch[services];
            AtomicInteger added = new AtomicInteger();
            long[] total = new long[1];
            Thread poller = new Thread(() -> {
                boolean[] ready = new boolean[services];
                int left = services;
                try {
                    while (left > 0) {
                        int upTo = added.get();
                        for (int k = 0; k < upTo; k++) {
                            if (!ready[k] && started[k].getCount() == 0) {
                                long at = System.nanoTime();
                                int count = caches.get(k).getInstances().size();
                                total[0] += count;
                                ready[k] = true;
                                left--;
                                say("ready " + names.get(k) + " " + count + " " + at);
                            }
                        }
                        if (left > 0) Thread.sleep(1);
                    }
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            }, "ready-poller");
            poller.start();
            for (int k = 0; k < services; k++) {
                started[k] = caches.get(k).startImmediate();
                added.incrementAndGet();
            }
            say("started " + System.nanoTime());
            poller.join();
            say("synced " + System.nanoTime() + " " + total[0]);

            BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
            String command;
            while ((command = in.readLine()) != null) {
                command = command.trim();
                if (command.equals("gc")) {
                    System.gc();
                }
                if (command.equals("heap") || command.equals("gc")) {
                    Runtime rt = Runtime.getRuntime();
                    say("heap " + (rt.totalMemory() - rt.freeMemory()) + " " + rt.totalMemory() + " "
                        + rt.maxMemory() + " " + System.nanoTime());
                    say("threads " + ManagementFactory.getThreadMXBean().getThreadCount() + " " + System.nanoTime());
                }
            }
            for (ServiceCache<Map> cache : caches) {
                cache.close();
            }
            discovery.close();
            client.close();
            OUT.flush();
            System.exit(0);
        } catch (Throwable e) {
            e.printStackTrace();
            System.exit(1);
        }
    }
}
