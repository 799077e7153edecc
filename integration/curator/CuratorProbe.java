// CuratorProbe — drives Apache Curator's service discovery (curator-x-discovery 5.4)
// against a real ZooKeeper, to prove herald's instance documents interoperate with it.
// Built and run by scripts/curator (javac/java with Debian's jars on the classpath).
//
//   list     CONNECT BASEPATH SERVICE       ServiceDiscovery.queryForInstances(SERVICE):
//                                           every child Curator can deserialize (no filtering)
//   provider CONNECT BASEPATH SERVICE       ServiceProvider.getAllInstances(): what a Curator
//                                           client would actually use ("enabled" filtering applied)
//   register CONNECT BASEPATH SERVICE ID ADDRESS PORT [k=v ...]
//                                           register one DYNAMIC (ephemeral) instance with a Map
//                                           payload of the k=v pairs, print "registered", hold
//                                           it until stdin reaches EOF, then unregister and exit
//
// list and provider print one single-line JSON object per instance, sorted by id:
//   {"id":..,"name":..,"address":..,"port":..,"sslPort":..,"serviceType":..,"payload":{..}}
// Any exception is printed to stderr and the exit status is 1.

import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.InputStream;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.retry.RetryNTimes;
import org.apache.curator.x.discovery.ServiceDiscovery;
import org.apache.curator.x.discovery.ServiceDiscoveryBuilder;
import org.apache.curator.x.discovery.ServiceInstance;
import org.apache.curator.x.discovery.ServiceProvider;
import org.apache.curator.x.discovery.ServiceType;

@SuppressWarnings({"rawtypes", "unchecked"})
public class CuratorProbe {
    private static final ObjectMapper JSON = new ObjectMapper();

    public static void main(String[] args) {
        try {
            if (args.length < 4 || !List.of("list", "provider", "register").contains(args[0])
                    || (args[0].equals("register") && args.length < 7)) {
                throw new IllegalArgumentException(usage());
            }
            String mode = args[0], connect = args[1], basePath = args[2], service = args[3];
            try (CuratorFramework client = connect(connect);
                 ServiceDiscovery<Map> discovery = ServiceDiscoveryBuilder.builder(Map.class)
                         .client(client).basePath(basePath).build()) {
                discovery.start();
                switch (mode) {
                    case "list" -> print(discovery.queryForInstances(service));
                    case "provider" -> {
                        try (ServiceProvider<Map> provider =
                                 discovery.serviceProviderBuilder().serviceName(service).build()) {
                            provider.start();
                            print(provider.getAllInstances());
                        }
                    }
                    case "register" -> register(discovery, service, args);
                    default -> throw new IllegalArgumentException(usage());
                }
            }
            System.out.flush();
            System.exit(0);
        } catch (Throwable e) {
            e.printStackTrace();
            System.exit(1);
        }
    }

    private static String usage() {
        return "usage: CuratorProbe list|provider CONNECT BASEPATH SERVICE\n"
             + "       CuratorProbe register CONNECT BASEPATH SERVICE ID ADDRESS PORT [k=v ...]";
    }

    // A started client with short timeouts: fail fast rather than retry for minutes.
    private static CuratorFramework connect(String connect) throws InterruptedException {
        CuratorFramework client = CuratorFrameworkFactory.builder()
                .connectString(connect)
                .sessionTimeoutMs(10_000)
                .connectionTimeoutMs(3_000)
                .retryPolicy(new RetryNTimes(3, 200))
                .build();
        client.start();
        if (!client.blockUntilConnected(5, TimeUnit.SECONDS)) {
            client.close();
            throw new IllegalStateException("could not connect to ZooKeeper at " + connect);
        }
        return client;
    }

    // One JSON line per instance, sorted by id.
    private static void print(Collection<ServiceInstance<Map>> instances) throws Exception {
        List<ServiceInstance<Map>> sorted = new ArrayList<>(instances);
        sorted.sort(Comparator.comparing(ServiceInstance::getId));
        for (ServiceInstance<Map> i : sorted) {
            Map<String, Object> line = new LinkedHashMap<>();
            line.put("id", i.getId());
            line.put("name", i.getName());
            line.put("address", i.getAddress());
            line.put("port", i.getPort());
            line.put("sslPort", i.getSslPort());
            line.put("serviceType", i.getServiceType() == null ? null : i.getServiceType().name());
            line.put("payload", i.getPayload());
            System.out.println(JSON.writeValueAsString(line));
        }
    }

    // Register one instance, report it, hold it while stdin stays open, then unregister.
    private static void register(ServiceDiscovery<Map> discovery, String service, String[] args)
            throws Exception {
        Map<String, String> payload = new LinkedHashMap<>();
        for (int k = 7; k < args.length; k++) {
            int eq = args[k].indexOf('=');
            if (eq < 0) throw new IllegalArgumentException("payload argument is not k=v: " + args[k]);
            payload.put(args[k].substring(0, eq), args[k].substring(eq + 1));
        }
        ServiceInstance<Map> instance = ServiceInstance.<Map>builder()
                .name(service)
                .id(args[4])
                .address(args[5])
                .port(Integer.parseInt(args[6]))
                .payload(payload)
                .serviceType(ServiceType.DYNAMIC)
                .build();
        discovery.registerService(instance);
        System.out.println("registered");
        System.out.flush();
        InputStream in = System.in;
        while (in.read() >= 0) { /* hold the registration until EOF */ }
        discovery.unregisterService(instance);
    }
}
