// C++ containers under churn: each thread builds std::map<std::string, std::vector<int>> and
// std::unordered_map tables of short strings, erases most of them, and hands a std::deque of
// std::string to the next thread through a mutex (freed there). libstdc++'s operator new and
// delete call malloc and free. Usage: cxxchurn [threads] [rounds]
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

static std::mutex mu;
static std::vector<std::unique_ptr<std::deque<std::string>>> mailbox;

int main(int argc, char **argv) {
    int threads = argc > 1 ? std::atoi(argv[1]) : 4;
    int rounds = argc > 2 ? std::atoi(argv[2]) : 60;
    mailbox.resize(threads);
    std::vector<unsigned long> sums(threads);
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; t++) {
        ts.emplace_back([t, threads, rounds, &sums] {
            unsigned long sum = 0, x = 88172645463325252ul + t;
            for (int r = 0; r < rounds; r++) {
                std::map<std::string, std::vector<int>> m;
                std::unordered_map<std::string, std::string> h;
                for (int i = 0; i < 4000; i++) {
                    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                    std::string k = "key-" + std::to_string(x % 3000);
                    m[k].push_back(i);
                    h[k + "/h"] = std::string(x % 100, 'v');
                }
                for (auto it = m.begin(); it != m.end();) {
                    sum += it->second.size();
                    it = (it->first.size() % 4 != 0) ? m.erase(it) : std::next(it);
                }
                auto d = std::make_unique<std::deque<std::string>>();
                for (auto &kv : h) d->push_back(kv.second + kv.first);
                std::unique_ptr<std::deque<std::string>> old;
                {
                    std::lock_guard<std::mutex> g(mu);
                    old = std::move(mailbox[(t + 1) % threads]);
                    mailbox[(t + 1) % threads] = std::move(d);
                }
                if (old) sum += old->size();
            }
            sums[t] = sum;
        });
    }
    unsigned long total = 0;
    for (int t = 0; t < threads; t++) { ts[t].join(); total += sums[t]; }
    std::printf("cxxchurn %lu\n", total);
    return 0;
}
